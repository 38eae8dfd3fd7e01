"""The console's newer pages and their endpoints, against the real routes on a real HTTP
server (tests/ui/api_server.py; no Ray): the method table and the wizard in another data
shape (DPO pairs, GRPO prompts), analytics over time from the store's request log, the live
router's confusion matrix on a labelled file, the improve loop's decisions, devices without
a scheduler — and the messages for a gateway that is down and a wrong key."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from qlp_ray.client import Client
from qlp_ray.core.config.train import PPOConfigSection
from qlp_ray.serve.telemetry.cost import CostLedger, PriceTable
from qlp_ray.store.database import FeedbackStore
from qlp_ray.train.methods import METHODS
from tests.ui.api_server import free_port
from tests.ui.conftest import ADMIN_KEY, SAMPLES, click, errors, page

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PAIR = {"prompt": "Paginate GET /orders", "chosen": "Use a cursor: return next_cursor.",
        "rejected": "Return every order at once."}  # fmt: skip


def _get(url: str, path: str, **kw) -> httpx.Response:
    return httpx.get(f"{url}{path}", headers=kw.pop("headers", ADMIN), timeout=60, **kw)


def test_methods_endpoint_is_the_method_table(platform):
    body = _get(platform["url"], "/v1/fine-tuning/methods").json()
    by_name = {m["name"]: m for m in body["data"]}
    assert list(by_name) == list(METHODS)
    assert by_name["dpo"]["data_shape"] == "preference pairs"
    assert by_name["dpo"]["fields"] == ["prompt", "chosen", "rejected", "domain"]
    assert by_name["grpo"]["needs_reward"] and by_name["ppo"]["needs_reward"]
    assert by_name["distill"]["needs_teacher"] and not by_name["reward"]["accepts_parent"]
    import torch

    assert body["gpu"] is torch.cuda.is_available()
    assert by_name["qlora"]["available"] is body["gpu"] and by_name["sft"]["available"]
    ppo = {o["name"]: o for o in by_name["ppo"]["hyperparameters"]}
    assert list(ppo) == list(METHODS["ppo"].hyperparameters)
    defaults = PPOConfigSection()  # the documented defaults (this config leaves them)
    assert {k: o["default"] for k, o in ppo.items()} == {k: getattr(defaults, k) for k in ppo}
    assert ppo["kl_coef"] | {"description": ""} == {
        "name": "kl_coef",
        "type": "number",
        "default": 0.2,
        "nullable": False,
        "description": "",
        "minimum": 0,
        "maximum": 100,
    }  # config ge 0, request le 100
    assert ppo["kl_target"]["nullable"] and ppo["kl_target"]["exclusiveMinimum"] == 0
    assert (ppo["clip_range"]["exclusiveMinimum"], ppo["clip_range"]["exclusiveMaximum"]) == (0, 1)
    assert ppo["ppo_epochs"]["type"] == "integer" and ppo["ppo_epochs"]["maximum"] == 64
    assert not [m for m in body["data"] if m["hyperparameters"] and m["name"] != "ppo"]
    user = _get(platform["url"], "/v1/fine-tuning/methods", headers={"authorization": "Bearer x"})
    assert user.status_code == 401 and user.json()["error"]["message"]


def test_dataset_checks_rows_in_the_methods_shape(platform):
    with Client(platform["url"], api_key=ADMIN_KEY) as client:
        report = client.validate_dataset([PAIR, {**PAIR, "rejected": PAIR["chosen"]},
                                          {"prompt": "p"}, PAIR], "dpo")  # fmt: skip
        assert report["data_shape"] == "preference pairs" and report["valid"] == 2
        rows = report["rows"]
        assert rows[1]["errors"] == ["chosen and rejected are identical"]
        assert rows[2]["errors"][0].startswith("missing field 'chosen'")
        assert rows[3]["duplicate_of"] == 0
        prompts = client.validate_dataset([{"prompt": "Deploy"}, {"instruction": "x"}, {}], "grpo")
        assert [r["valid"] for r in prompts["rows"]] == [True, True, False]
        bad = httpx.post(f"{platform['url']}/v1/datasets/validate", headers=ADMIN, timeout=30,
                         json={"rows": [PAIR], "method": "sgd"})  # fmt: skip
        assert bad.status_code == 400 and "method must be" in bad.json()["error"]["message"]


def test_wizard_builds_dpo_pairs_and_launch_sends_the_method(platform):
    at = page("dataset", platform["url"])
    at.selectbox(key="dataset_method").select("dpo")
    at = at.run()
    assert at.session_state["config"]["method"] == "dpo"
    for rejected in (PAIR["chosen"], PAIR["rejected"], "Offset pagination with ?page=."):
        at.text_area(key="form_prompt").input(PAIR["prompt"])
        at.text_area(key="form_chosen").input(PAIR["chosen"])
        at.text_area(key="form_rejected").input(rejected)
        at = click(at, "Add example")
    assert not at.exception
    assert errors(at) == ["Invalid row — Row 1: chosen and rejected are identical"]
    assert {m.label: m.value for m in at.metric}["Valid rows"] == "2"
    state = {k: at.session_state[k] for k in ("rows", "report", "methods")}
    state["rows"] = state["rows"][1:]  # the invalid pair: the upload would refuse it

    at = page("configure", platform["url"], config={"method": "dpo"}, **state)
    assert not at.exception and not errors(at)
    assert at.selectbox(key="configure_method").value == "dpo"
    assert [r.options for r in at.radio] == [["steps"]]  # DPO runs steps, not epochs
    assert "qlora" not in at.selectbox(key="configure_method").options  # no GPU here
    assert not [b for b in at.button if b.label == "Estimate cost and time"]

    config = {"model": "api", "method": "dpo", "length": "steps", "n_steps": 2, "parent": "api@1"}
    at = page("launch", platform["url"], config=config, **state)
    assert json.loads(at.json[0].value)["method"] == "dpo"
    assert json.loads(at.json[0].value)["parent"] == "api@1"
    at = click(at, "Launch training")  # checked (method, shape, parent) before the Jobs API
    assert errors(at)[0].startswith("The platform cannot do this right now (503)")

    capsules = [json.loads(x) for x in (SAMPLES / "api.train.jsonl").read_text().splitlines()]
    with Client(platform["url"], api_key=ADMIN_KEY) as client:
        path = client.upload_file(capsules[:4], "caps.jsonl")["path"]
    at = page("launch", platform["url"], config=config, **state)
    at.session_state["upload"] = {"path": path, "digest": "x"}  # capsules sent as DPO data
    at.session_state["rows"] = capsules[:4]
    at = click(at, "Launch training")
    assert "missing field 'prompt'" in errors(at)[0]


def test_grpo_without_a_reward_is_refused_before_launch(platform):
    state = {"rows": [{"prompt": "Deploy"}] * 2, "methods": None,
             "report": {"enough": True, "valid": 2, "total": 2, "domains": {},
                        "data_shape": "prompts"}}  # fmt: skip
    config = {"model": "devops", "method": "grpo", "length": "steps", "n_steps": 2}
    at = page("launch", platform["url"], config=config, **state)
    assert "grpo needs a reward" in at.warning[0].value
    [launch] = [b for b in at.button if b.label == "Launch training"]
    assert launch.disabled


def _store_rows(platform) -> tuple[float, list[float]]:
    """Requests of two adapters in two minutes, with ratings and thumbs, in the real store."""
    store = FeedbackStore.from_config(platform["cfg"])
    t0 = (int(time.time()) // 60 - 3) * 60.0
    lat = [100.0, 200.0, 300.0, 400.0, 1000.0]
    for i, ms in enumerate(lat):
        store.record_request(id=f"ts-a{i}", ts=t0 + i, model="api", adapter_id="api",
                             adapter_version=2, domain="api", prompt="p", response="r",
                             latency_ms=ms, prompt_tokens=100, completion_tokens=50)  # fmt: skip
    store.record_request(id="ts-b0", ts=t0 + 61, model="devops", adapter_id="devops",
                         domain="devops", prompt="p", response="r", latency_ms=50.0,
                         prompt_tokens=10, completion_tokens=10)  # fmt: skip
    store.record_feedback("ts-a0", "thumbs", 1)
    store.record_feedback("ts-a1", "rating", 2)
    store.record_feedback("ts-a2", "rating", 5)
    store.record_feedback("ts-a3", "rating", 1, caller="not-the-requester")  # untrusted
    store.close()
    return t0, lat


def test_analytics_over_time_from_the_request_log(platform):
    t0, lat = _store_rows(platform)
    answer = _get(platform["url"], "/v1/admin/analytics/timeseries?bucket=minute").json()
    points = {(p["t"], p["adapter"]): p for p in answer["data"]}
    api = points[(t0, "api")]
    assert api["requests"] == 5 and api["p50_ms"] == 300.0
    assert api["p95_ms"] == pytest.approx(float(np.percentile(lat, 95)))
    assert api["p99_ms"] == pytest.approx(float(np.percentile(lat, 99)))
    assert (api["rated"], api["successes"], api["success_rate"]) == (3, 2, pytest.approx(2 / 3))
    assert api["mean_rating"] == 3.5 and api["thumbs_up"] == 1
    saved = CostLedger(PriceTable.load()).price("api", 100, 50).savings_usd
    assert api["savings_usd"] == pytest.approx(5 * saved)
    assert points[(t0 + 60, "devops")]["requests"] == 1
    hourly = _get(platform["url"], "/v1/admin/analytics/timeseries?bucket=hour").json()["data"]
    assert sum(p["requests"] for p in hourly if p["adapter"] == "api") >= 5
    bad = _get(platform["url"], "/v1/admin/analytics/timeseries?bucket=week")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket"

    at = page("analytics", platform["url"])
    assert not at.exception  # this server has no experiments runtime (a Serve app has)
    assert errors(at) == ["Not found: no route GET /v1/admin/experiments"]
    charts = at.get("vega_lite_chart")
    assert len(charts) == 4  # requests, p95, success rate, savings


def _register_routable(platform, domain: str, seed: int) -> None:
    from qlp_ray.route.centroid import compute_centroid
    from qlp_ray.route.embeddings import get_embedder
    from tests.helpers.tiny_lm import save_random_lora
    from tests.ui.conftest import registry_base

    lines = (SAMPLES / f"{domain}.train.jsonl").read_text().splitlines()
    texts = [json.loads(x)["instruction"] for x in lines]
    centroid = compute_centroid(get_embedder().encode(texts)).tolist()
    adapter = save_random_lora(platform["base"], platform["home"] / f"route-{domain}", seed)
    platform["registry"].register(adapter, adapter_id=domain, domain=domain,
                                  base_model=registry_base(platform["cfg"]),
                                  metadata={"centroid": centroid})  # fmt: skip


def test_router_confusion_matrix_on_a_labelled_file(platform, tmp_path, monkeypatch):
    for seed, domain in enumerate(("devops", "frontend"), start=5):
        _register_routable(platform, domain, seed)
    labelled = []
    for domain, n in (("devops", 8), ("frontend", 8), ("ml", 4)):
        lines = (SAMPLES / f"{domain}.heldout.jsonl").read_text().splitlines()[:n]
        labelled += [{"text": json.loads(x)["instruction"], "domain": domain} for x in lines]
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))

    url = f"{platform['url']}/v1/admin/routes/evaluate"
    result = httpx.post(url, headers=ADMIN, json={"rows": labelled}, timeout=120).json()
    matrix = np.array(result["matrix"])
    assert result["n"] == 20 and matrix.sum() == 20 and result["labels"][-1] == "ml"
    columns = result["columns"]
    diagonal = sum(matrix[i][columns.index(d)] for i, d in enumerate(result["labels"]))
    assert result["accuracy"] == pytest.approx(diagonal / 20)
    assert result["recall"]["ml"] == 0.0  # no ml adapter: never routed there
    assert result["recall"]["devops"] >= 0.5 and result["recall"]["frontend"] >= 0.5
    bad = httpx.post(url, headers=ADMIN, json={"rows": [{"text": "x"}]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rows.0"

    monkeypatch.setenv("QLP_UI_DATA_DIRS", str(tmp_path))
    at = page("router", platform["url"])
    assert not at.exception and not errors(at), errors(at)
    routable = {r for r in at.dataframe[0].value["adapter"]}
    assert {"devops", "frontend", "api"} <= routable  # api: listed as skipped (no centroid)
    assert at.selectbox(key="router_file").value == f"{tmp_path.name}/labelled.jsonl"
    at = click(at, "Evaluate the live router")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Rows"] == "20" and metrics["Accuracy"] == f"{result['accuracy']:.1%}"
    assert len(at.get("vega_lite_chart")) == 1


def test_improve_decisions_from_the_audit_log(platform):
    store = FeedbackStore.from_config(platform["cfg"])
    store.record_event("train", adapter_id="dataeng", version=1, actor="orchestrator",
                       payload={"method": "dpo", "examples": 40})  # fmt: skip
    store.record_event("decision", adapter_id="dataeng", version=1, actor="orchestrator",
                       payload={"outcome": "rollback", "reason": "z=-2.1 < -1.64",
                                "method": "dpo", "control": 1, "treatment": 2})  # fmt: skip
    promote = {"outcome": "promote", "reason": "p=0.01", "method": "dpo"}
    store.record_event("decision", adapter_id="devops", version=2, actor="orchestrator",
                       payload=promote)  # fmt: skip
    store.close()
    rows = _get(platform["url"], "/v1/admin/improve/decisions?domain=dataeng").json()["data"]
    assert [(r["kind"], r["outcome"]) for r in rows] == [("train", "done"),
                                                        ("decision", "rollback")]  # fmt: skip
    assert rows[1]["reason"] == "z=-2.1 < -1.64" and rows[1]["numbers"]["treatment"] == 2

    at = page("decisions", platform["url"])
    assert not at.exception and not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decisions"] == "2" and metrics["Promoted"] == "1"
    assert metrics["Kept / rolled back"] == "1"
    at.selectbox(key="decisions_domain").select("devops")
    at = at.run()
    assert list(at.dataframe[0].value["outcome"]) == ["promote"]


def test_devices_without_a_scheduler_say_so(platform):
    import ray

    at = page("devices", platform["url"])
    assert not at.exception
    if ray.is_initialized():  # a Ray session of other tests in this process: its scheduler
        assert errors(at) == [] or "hardware scheduler is not running" in errors(at)[0]
    else:
        assert errors(at) == [
            "The platform cannot do this right now (503): the hardware scheduler is not "
            "reachable: this gateway does not run in a Ray cluster"
        ]


@pytest.mark.parametrize("name", ["router", "devices", "decisions", "analytics"])
def test_new_pages_say_when_the_gateway_is_down_or_the_key_is_wrong(platform, name):
    down = f"http://127.0.0.1:{free_port()}"
    at = page(name, down)
    assert not at.exception and "is not reachable" in errors(at)[0]
    at = page(name, platform["url"], key="user-key")
    assert not at.exception and "may not use admin routes (403)" in errors(at)[0]


def test_routing_table_read_follows_the_registry(platform):
    """``GET /v1/admin/routes`` checks the registry's generation marker as routing does: an
    adapter registered (then retired) shows without any routing call or explicit refresh."""
    poll_s = platform["cfg"].router.generation_poll_s
    before = _get(platform["url"], "/v1/admin/routes").json()
    assert "dataeng" not in before["adapters"]
    _register_routable(platform, "dataeng", seed=11)
    time.sleep(poll_s + 0.1)
    after = _get(platform["url"], "/v1/admin/routes").json()
    assert after["adapters"]["dataeng"] == {"domain": "dataeng", "version": 1}
    assert after["generation"] != before["generation"] and after["refreshed_s_ago"] < 5
    platform["registry"].retire("dataeng", "test: table follows a retire too")
    time.sleep(poll_s + 0.1)
    retired = _get(platform["url"], "/v1/admin/routes").json()
    assert "dataeng" not in retired["adapters"] and retired["generation"] != after["generation"]
