"""A/B experiments over real HTTP: config and admin-created experiments, sticky assignment,
durable outcomes, feedback in the analysis, validation and the admin key.

The tiny base model and real signed PEFT adapters of ``test_compositor_http`` (``dataeng``
v1 current and v2, ``frontend``), on local Ray Serve (the session's port).
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.helpers.request_log import committed_request
from tests.serve.test_compositor_http import ADMIN, USER, build, wait_for

pytestmark = pytest.mark.integration

PORT, URL = SERVE_PORT, SERVE_URL
AB = {
    "id": "dataeng-ab",
    "applies_to": ["dataeng"],
    "strategy": "sticky",
    "min_detectable_effect": 0.5,
    "variants": [
        {"name": "v1", "target": "dataeng@1"},
        {"name": "v2", "target": "dataeng@2"},
    ],
}
FROM_CONFIG = """definitions:
  - id: frontend-stack
    applies_to: [frontend]
    strategy: weighted
    variants:
      - {name: single, target: frontend}
      - {name: stacked, target: "frontend:0.5+dataeng:0.5"}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory, ray_local):
    from qlp_ray.store.database import FeedbackStore

    home = tmp_path_factory.mktemp("qlp_exper")
    cfg, registry = build(home)
    (home / "experiments.yaml").write_text(FROM_CONFIG)
    cfg.serve.port, cfg.serve.app_name = PORT, "qlp_exper"
    cfg.serve.prewarm_stacks = []
    cfg.experiments.files = [home / "experiments.yaml"]
    with deployed(cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert url == URL
        store = FeedbackStore.from_config(cfg, environ={})
        yield client, store, {"home": home, "registry": registry, "cfg": cfg}
        store.close()


def _complete(client: httpx.Client, model: str, user: str | None = None) -> dict:
    body = {"model": model, "prompt": "select rows", "max_tokens": 2}
    if user is not None:
        body["user"] = user
    r = client.post("/v1/completions", json=body, headers=USER)
    assert r.status_code == 200, r.text
    return r.json()


def _assignment_counts(experiment: str) -> dict[str, int]:
    """``ray_qlp_experiment_assignments_total`` by variant, from Ray's Prometheus endpoint."""
    import re

    import ray

    # the head's exporter: worker nodes another module added (and removed) export their own
    [port] = [n["MetricsExportPort"] for n in ray.nodes()
              if n["Alive"] and "node:__internal_head__" in n["Resources"]]  # fmt: skip
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("ray_qlp_experiment_assignments_total{") and (
            f'experiment="{experiment}"' in line
        ):
            variant = re.search(r'variant="([^"]+)"', line).group(1)
            counts[variant] = counts.get(variant, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"]
    return err


def test_config_experiment_runs_from_start(gw):
    client, _, _ = gw
    listed = client.get("/v1/admin/experiments", headers=ADMIN).json()["data"]
    assert [(e["id"], e["status"]) for e in listed] == [("frontend-stack", "running")]
    seen, counts = {}, {"single": 0, "stacked": 0}
    for i in range(8):
        q = _complete(client, "frontend", f"f{i}")["qlp"]
        assert q["experiment"] == "frontend-stack", q
        seen[q["variant"]] = q["adapter"]
        counts[q["variant"]] += 1
    for variant, adapter in seen.items():  # each variant served its own target
        assert adapter == {"single": "frontend", "stacked": "frontend@1:0.5+dataeng@1:0.5"}[variant]
    gw[2]["frontend_counts"] = {k: n for k, n in counts.items() if n}  # see the last test
    q = _complete(client, "dataeng@1")["qlp"]  # a pinned request is not in any experiment
    assert q["experiment"] is None and q["variant"] is None


def test_ab_flow_sticky_feedback_analysis_and_stop(gw):
    client, store, _ = gw
    r = client.post("/v1/admin/experiments", json=AB, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "running" and r.json()["spec"]["applies_to"] == ["dataeng"]

    served = {}  # user -> (variant, request id)
    for i in range(40):
        body = _complete(client, "dataeng", f"user-{i}")
        q = body["qlp"]
        assert q["experiment"] == "dataeng-ab" and q["variant"] in ("v1", "v2"), q
        assert q["adapter"] == "dataeng" and q["version"] == {"v1": 1, "v2": 2}[q["variant"]]
        served[f"user-{i}"] = (q["variant"], q["request_id"])
    counts = {v: sum(1 for x, _ in served.values() if x == v) for v in ("v1", "v2")}
    assert counts["v1"] > 0 and counts["v2"] > 0, counts
    for i in range(0, 40, 4):  # sticky: a returning user gets the same variant
        q = _complete(client, "dataeng", f"user-{i}")["qlp"]
        assert q["variant"] == served[f"user-{i}"][0]
        counts[q["variant"]] += 1
    row = committed_request(store, served["user-0"][1])  # the request log names the variant too
    assert (row.experiment, row.variant) == ("dataeng-ab", served["user-0"][0])

    before = client.get("/v1/admin/experiments/dataeng-ab", headers=ADMIN).json()
    by_name = {v["name"]: v for v in before["variants"]}
    assert {n: v["impressions"] for n, v in by_name.items()} == counts
    assert all(v["errors"] == 0 and v["mean_latency_s"] > 0 for v in by_name.values())
    assert all(v["successes"] == v["failures"] == 0 for v in by_name.values())  # no feedback yet
    assert before["winner"] is None and before["p_value"] == 1.0

    for variant, rid in served.values():  # users like v2, not v1; v2 users also rate it 5
        fb = {"request_id": rid, "kind": "thumbs", "value": 1 if variant == "v2" else -1}
        assert client.post("/v1/feedback", json=fb, headers=USER).status_code == 200
        if variant == "v2":
            fb = {"request_id": rid, "kind": "rating", "value": 5}
            assert client.post("/v1/feedback", json=fb, headers=USER).status_code == 200
    after = client.get("/v1/admin/experiments/dataeng-ab", headers=ADMIN).json()
    by_name = {v["name"]: v for v in after["variants"]}
    n1 = sum(1 for v, _ in served.values() if v == "v1")
    n2 = 40 - n1
    assert (by_name["v1"]["successes"], by_name["v1"]["failures"]) == (0, n1)
    assert (by_name["v2"]["successes"], by_name["v2"]["failures"]) == (n2, 0)
    assert by_name["v2"]["success_rate"] == 1.0 and by_name["v2"]["mean_feedback"] == 5.0
    assert by_name["v2"]["ci"][0] > by_name["v1"]["ci"][1]
    assert after["p_value"] < 0.001 and after["min_sample_size_per_variant"] <= min(n1, n2)
    assert after["winner"] == "v2"

    r = client.post("/v1/admin/experiments/dataeng-ab/stop", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "stopped", r.text
    q = _complete(client, "dataeng", "user-1")["qlp"]
    assert q["experiment"] is None and q["version"] == 1  # back to the current version
    final = client.get("/v1/admin/experiments/dataeng-ab", headers=ADMIN).json()
    assert final["status"] == "stopped" and final["active"] is False
    assert {v["name"]: v["impressions"] for v in final["variants"]} == counts


def test_bad_experiments_are_4xx_naming_the_problem(gw):
    client, _, _ = gw

    def post(**changes) -> httpx.Response:
        return client.post("/v1/admin/experiments", json={**AB, **changes}, headers=ADMIN)

    ghost = [{"name": "a", "target": "dataeng"}, {"name": "b", "target": "ghost@1"}]
    err = _error(post(id="e1", variants=ghost), 404)
    assert "'ghost'" in err["message"] and err["param"] == "variants.1.target"
    nine = [{"name": "a", "target": "dataeng@9"}, {"name": "b", "target": "dataeng"}]
    assert "no version 9" in _error(post(id="e2", variants=nine), 404)["message"]
    stack = [{"name": "a", "target": "dataeng+nope"}, {"name": "b", "target": "dataeng"}]
    assert "'nope'" in _error(post(id="e3", variants=stack), 404)["message"]
    assert _error(post(id="e4", applies_to=["nope"]), 404)["param"] == "applies_to.0"
    zero = [{"name": "a", "target": "dataeng", "weight": 0}, {"name": "b", "target": "dataeng@2",
                                                              "weight": 0}]  # fmt: skip
    assert "sum to more than 0" in _error(post(id="e5", variants=zero), 400)["message"]
    negative = [{"name": "a", "target": "dataeng", "weight": -1}, {"name": "b", "target": "x"}]
    assert _error(post(id="e6", variants=negative), 400)["param"] == "variants.0.weight"
    assert _error(post(id="e7", strategy="roulette"), 400)["param"] == "strategy"
    assert _error(post(id="e8", variants=AB["variants"][:1]), 400)["param"] == "variants"
    assert _error(post(id="bad id!"), 400)["param"] == "id"
    assert _error(post(id="e9", surprise=1), 400)["param"] == "surprise"
    bad_json = client.post("/v1/admin/experiments", content=b"{nope", headers={
        **ADMIN, "content-type": "application/json"})  # fmt: skip
    _error(bad_json, 400)
    assert post(id="dup").status_code == 201
    assert _error(post(id="dup"), 409)["code"] == "conflict"
    assert (
        "'ghost'"
        in _error(client.get("/v1/admin/experiments/ghost", headers=ADMIN), 404)["message"]
    )
    _error(client.post("/v1/admin/experiments/ghost/stop", headers=ADMIN), 404)
    ids = [e["id"] for e in client.get("/v1/admin/experiments", headers=ADMIN).json()["data"]]
    assert not {"e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"} & set(ids)
    client.post("/v1/admin/experiments/dup/stop", headers=ADMIN)


def test_experiment_routes_need_the_admin_key(gw):
    client, _, _ = gw
    for method, path, body in [
        ("GET", "/v1/admin/experiments", None),
        ("POST", "/v1/admin/experiments", {"bad": "body"}),  # the key is checked first
        ("GET", "/v1/admin/experiments/frontend-stack", None),
        ("POST", "/v1/admin/experiments/frontend-stack/stop", None),
    ]:
        for headers in ({}, {"authorization": "Bearer wrong"}):
            err = _error(client.request(method, path, json=body, headers=headers), 401)
            assert err["code"] == "invalid_api_key"
        assert _error(client.request(method, path, json=body, headers=USER), 403)
    listed = client.get("/v1/admin/experiments", headers=ADMIN).json()["data"]
    assert {e["id"]: e["status"] for e in listed}["frontend-stack"] == "running"  # not stopped


def test_failed_requests_count_as_errors_of_their_variant(gw):
    """A variant whose adapter is corrupted after the start fails its own requests (424):
    each is a durable failure of that variant; the other variant keeps serving."""
    from pathlib import Path

    from qlp_ray.models.base import base_model_id

    client, _, env = gw
    src = env["home"] / "src" / "frontend1"
    record = env["registry"].register(src, adapter_id="broken", domain="dataeng",
                                      base_model=base_model_id(env["cfg"]))  # fmt: skip
    arms = [{"name": "ok", "target": "wide"}, {"name": "bad", "target": "broken"}]
    spec = {"id": "broken-ab", "applies_to": ["wide"], "strategy": "random", "success": "served",
            "variants": arms}  # fmt: skip
    assert client.post("/v1/admin/experiments", json=spec, headers=ADMIN).status_code == 201
    weights = Path(record.path) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    statuses = []
    for i in range(12):
        body = {"model": "wide", "prompt": "hi", "max_tokens": 2, "user": f"w{i}"}
        r = client.post("/v1/completions", json=body, headers=USER)
        statuses.append(r.status_code)
        if r.status_code == 200:
            assert r.json()["qlp"]["variant"] == "ok"
        else:
            assert _error(r, 424)["type"] == "adapter_error"
    report = client.get("/v1/admin/experiments/broken-ab", headers=ADMIN).json()
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["bad"]["impressions"] == by_name["bad"]["errors"] == statuses.count(424) > 0
    assert by_name["ok"]["impressions"] == by_name["ok"]["successes"] == statuses.count(200) > 0
    assert by_name["ok"]["errors"] == 0 and by_name["bad"]["success_rate"] == 0.0
    client.post("/v1/admin/experiments/broken-ab/stop", headers=ADMIN)


def test_assignments_reach_prometheus(gw):
    """``qlp_experiment_assignments_total`` as Ray's metrics endpoint exports it (last: the
    export lags by its report interval, which the other tests have used up)."""
    expected = gw[2]["frontend_counts"]
    assert wait_for(lambda: _assignment_counts("frontend-stack") == expected, 30, "the counter")
