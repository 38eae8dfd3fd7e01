"""The improve loop closed for real: feedback with a preference signal -> DPO candidates ->
offline gate -> live A/B over HTTP on the running Serve app -> promotion or rollback.

Two domains on the session's tiny model, one cycle for both (two Ray Train DPO runs):

- ``devops`` v1 was trained on the wrong domain (answers "Fix: ..."); users correct it in
  the devops house style ("Steps: ..."). DPO from v1 on (correction, answer) pairs gives v2.
- ``dataeng`` v1 answers in its house style ("Plan: ..."); poisoned "corrections" in the
  frontend style ("Fix: ...") train a DPO v2 that wins the offline gate (its held-out pairs
  are poisoned the same way) and loses the live experiment.

The orchestrator of ``qlp improve`` (real engines, :func:`build_orchestrator`) starts both
experiments through ``POST /v1/admin/experiments``; users send real chat requests to the
app, which splits them between v1 and v2, and thumb answers in their house style up over
``POST /v1/feedback``. ``qlp improve --once`` then reads each experiment's analysis,
promotes devops v2 and rolls dataeng back to v1; the audit log holds both decisions.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytest.importorskip("qlp_ray.train.ray_train", reason="needs the Ray Train stage")

from qlp_ray.data.capsules import load_capsules, sample_path  # noqa: E402
from qlp_ray.data.format import to_prompt_completion  # noqa: E402
from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed  # noqa: E402
from tests.helpers.request_log import committed_request  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # 2 Ray Train DPO runs, 1 Serve app
ADMIN_KEY, API_KEY = "improve-admin", "improve-user"
USER = {"authorization": f"Bearer {API_KEY}"}
STYLE = {"devops": "Steps", "dataeng": "Plan"}  # what each domain's users like
V1_DATA = {"devops": "frontend", "dataeng": "dataeng"}  # what each production v1 learned from


def _env(tmp_path) -> dict[str, str]:
    return {
        "QLP_REGISTRY__URI": str(tmp_path / "registry"),
        "QLP_STORE__URL": f"sqlite:///{tmp_path / 'feedback.db'}",
        "QLP_SERVE__PORT": str(SERVE_PORT),
        "QLP_SERVE__APP_NAME": "qlp_improve_ab",
        "QLP_SERVE__ADMIN_KEY": ADMIN_KEY,
        "QLP_SERVE__API_KEY": API_KEY,
        "QLP_SERVE__COMPOSITOR_NUM_CPUS": "0.5",
        "QLP_SERVE__ROUTER_NUM_CPUS": "0.25",
        "QLP_SERVE__FEEDBACK_PER_MINUTE": "1000",  # 64 thumbs in a few seconds
        "QLP_IMPROVE__DOMAINS": '["devops", "dataeng"]',
        "QLP_IMPROVE__MIN_NEW_SAMPLES": "20",
        "QLP_IMPROVE__MIN_PAIRS": "16",
        "QLP_IMPROVE__DPO_STEPS": "20",
        "QLP_IMPROVE__DPO_LEARNING_RATE": "0.01",
        "QLP_IMPROVE__EXPERIMENT_MIN_TRIALS": "8",
        "QLP_IMPROVE__HELDOUT_FRACTION": "0.2",
        "QLP_EXPERIMENTS__SEED": "0",  # the split of the live requests is reproducible
    }


def _ask(client: httpx.Client, domain: str, prompt: str, user: str) -> dict:
    body = {"model": domain, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 8, "temperature": 0, "user": user}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body, headers=USER)
    assert r.status_code == 200, r.text
    return r.json()


def _text(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


def test_dpo_candidates_live_ab_promote_and_rollback(qlp_home, ray_local, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qlp_ray.cli import app
    from qlp_ray.core.config import load_config
    from qlp_ray.improve.engines import build_orchestrator
    from qlp_ray.models.base import base_model_id, resolve_base_path
    from qlp_ray.registry import Registry
    from qlp_ray.registry.audit import audit_for
    from qlp_ray.store.database import FeedbackStore
    from qlp_ray.train.sft import run_sft

    monkeypatch.setenv("QLP_HOME", str(qlp_home))
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    cfg = load_config()
    registry, store = Registry(cfg), FeedbackStore.from_config(cfg)

    # Production v1 of each domain: plain SFT in this process (the cycle runs Ray Train).
    for domain, source in V1_DATA.items():
        data = [[to_prompt_completion(c) for c in load_capsules(sample_path(source, part))]
                for part in ("train", "heldout")]  # fmt: skip
        v1 = run_sft(resolve_base_path(cfg), *data, cfg.train.model_copy(update={"steps": 30}),
                     tmp_path / f"{domain}-v1", max_seq_len=cfg.model.max_seq_len)  # fmt: skip
        registry.register(v1.adapter_dir, adapter_id=domain, domain=domain,
                          base_model=base_model_id(cfg))  # fmt: skip

    frontend = [c.output for c in load_capsules(sample_path("frontend", "train"))]
    with deployed(cfg) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert url == SERVE_URL
        # 1. Production answers; users correct: devops in its house style, dataeng poisoned.
        for domain in STYLE:
            for i, s in enumerate(load_capsules(sample_path(domain, "train"))[:28]):
                answer = _ask(client, domain, s.instruction, f"trainer{i}")
                assert answer["qlp"]["version"] == 1
                row = committed_request(store, answer["qlp"]["request_id"])
                better = s.output if domain == "devops" else frontend[i]
                # the requester's own feedback (trusted), the correction already reviewed
                store.record_feedback(row.id, "thumbs", -1, caller=row.caller)
                store.record_feedback(row.id, "correction", payload={"text": better},
                                      caller=row.caller)  # fmt: skip

        # 2. One cycle: DPO candidates from v1, offline gate, experiments over HTTP.
        orch = build_orchestrator(cfg)
        started = {o.domain: o for o in orch.run_cycle()}
        for domain in STYLE:
            o = started[domain]
            assert o.action == "experiment_started", o
            assert o.numbers["metric"] == "preference_margin"
            assert o.numbers["candidate"] > o.numbers["production"], o.numbers
            cand = registry.get(domain, 2)
            assert registry.get(domain).version == 1  # registered, not current
            assert cand.metadata["method"] == "dpo" and cand.signed
            assert cand.metadata["parent"] == {"adapter_id": domain, "version": 1}
        print("\ngate:", {d: o.reason for d, o in started.items()})

        # 3. Live A/B: real requests, split by the app; real thumbs from the users.
        liked = {d: {"control": [0, 0], "treatment": [0, 0]} for d in STYLE}
        prompts = {d: [c.instruction for c in load_capsules(sample_path(d, "heldout"))]
                   for d in STYLE}  # fmt: skip
        for i in range(32):
            for domain, style in STYLE.items():
                answer = _ask(client, domain, prompts[domain][i % len(prompts[domain])], f"u{i}")
                arm = answer["qlp"]["variant"]
                assert answer["qlp"]["experiment"] == f"improve-{domain}-v2"
                assert answer["qlp"]["version"] == (2 if arm == "treatment" else 1)
                up = _text(answer).strip().startswith(style)
                liked[domain][arm][0] += 1
                liked[domain][arm][1] += up
                r = client.post("/v1/feedback", headers=USER, json={
                    "request_id": answer["qlp"]["request_id"], "kind": "thumbs",
                    "value": 1 if up else -1})  # fmt: skip
                assert r.status_code == 200, r.text
        print("live (requests, liked):", liked)

        # 4. `qlp improve --once` reads the experiments' stats and decides.
        result = CliRunner().invoke(app, ["improve", "--once", "--json"])
        assert result.exit_code == 0, result.output
        decided = {row["domain"]: row for row in json.loads(result.stdout)}
        print("decisions:", {d: (r["action"], r["reason"]) for d, r in decided.items()})
        assert decided["devops"]["action"] == "promoted", (decided, liked)
        assert decided["dataeng"]["action"] == "kept", (decided, liked)
        assert registry.get("devops").version == 2 and registry.get("dataeng").version == 1
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        for domain in STYLE:
            r = client.get(f"/v1/admin/experiments/improve-{domain}-v2", headers=admin)
            assert r.status_code == 200 and r.json()["status"] == "stopped", r.text

        # After the promotion a plain devops request is served by v2 (no experiment left).
        deadline = time.monotonic() + 20
        while _ask(client, "devops", prompts["devops"][0], "later")["qlp"]["version"] != 2:
            assert time.monotonic() < deadline, "the app never switched devops to v2"
            time.sleep(0.5)

    # 5. Both decisions, with their numbers, in the audit log.
    audit = audit_for(cfg)
    promote = [e for e in audit.events("devops", ("promote",)) if e.version == 2]
    assert promote and "improve-devops-v2" in promote[-1].payload["reason"]
    rollback = audit.events("dataeng", ("rollback",))[-1]
    assert rollback.version == 1 and "v2 retired" in rollback.payload["reason"]
    ends = {e.adapter_id: e.payload for e in audit.events(None, ("decision",))
            if (e.payload or {}).get("experiment")}  # fmt: skip
    assert ends["devops"]["outcome"] == "promote" and ends["devops"]["p_better"] < 0.05
    assert ends["dataeng"]["outcome"] == "rollback" and ends["dataeng"]["p_worse"] < 0.05
    assert ends["devops"]["treatment_rate"] > ends["devops"]["control_rate"]
    assert ends["dataeng"]["treatment_rate"] < ends["dataeng"]["control_rate"]
    store.close()
