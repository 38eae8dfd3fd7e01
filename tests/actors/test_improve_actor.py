"""The orchestrator actor on a real local Ray: runs cycles, survives being killed.

No training is due here (too few new samples), so the test is cheap; the training
path with real engines is tests/e2e/test_improve_loop.py.
"""

from __future__ import annotations

import time

import pytest

from actors.orchestrator import start_orchestrator
from qlp_ray.core.config import load_config
from qlp_ray.store.database import FeedbackStore

pytestmark = pytest.mark.integration


def _wait_restarted(actor, timeout_s: float = 60.0):
    """Status of the restarted process (ray.kill is asynchronous; the old one may answer)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = ray.get(actor.status.remote(), timeout=10)
            if status["cycles"] == 0:
                return status
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"actor did not restart within {timeout_s} s")
        time.sleep(0.5)


def test_actor_cycles_and_restarts(ray_local, tmp_path):
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "home")},
                                 "improve": {"min_new_samples": 10}}, environ={})  # fmt: skip
    store = FeedbackStore.from_config(cfg, environ={})
    for i in range(4):
        rid = store.record_request(model="base", prompt=f"q{i}", response="a", domain="ml")
        store.record_feedback(rid, "thumbs", 1)
    actor = start_orchestrator(cfg, name="qlp-improve-test")
    [row] = ray_local.get(actor.run_once.remote())
    assert row["domain"] == "ml" and row["action"] == "skipped"
    assert ray_local.get(actor.status.remote())["cycles"] == 1

    ray_local.kill(actor, no_restart=False)  # a crash: Ray restarts it (max_restarts=-1)
    status = _wait_restarted(actor)  # a fresh process; all state is in the store
    assert status["cycles"] == 0
    [again] = ray_local.get(actor.run_once.remote())
    assert again == row
    assert start_orchestrator(cfg, name="qlp-improve-test")._actor_id == actor._actor_id
    ray_local.kill(actor, no_restart=True)
    store.close()
