"""`qlp improve --once` exits 3 when every domain is busy (another orchestrator holds
its lease), so a cron job can tell a skipped cycle from one that ran; 0 otherwise."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from qlp_ray.cli import app, improve, state
from qlp_ray.core.config import load_config
from qlp_ray.improve.orchestrator import Orchestrator
from qlp_ray.registry.signing import init_keys
from qlp_ray.registry.store import Registry
from qlp_ray.store.database import FeedbackStore
from qlp_ray.store.leases import Leases
from tests.improve.test_orchestrator_flow import Evaluator, Trainer, _good_feedback


def test_cycle_exit_code() -> None:
    assert improve.cycle_exit_code([]) == 0  # nothing due
    assert improve.cycle_exit_code(["busy", "skipped"]) == 0
    assert improve.cycle_exit_code(["busy", "busy"]) == improve.EXIT_ALL_BUSY == 3


def test_once_exits_3_when_its_domain_is_held_elsewhere(tmp_path, monkeypatch) -> None:
    home, url = tmp_path / "home", f"sqlite:///{tmp_path / 'feedback.db'}"
    overrides = {"paths": {"home": str(home)}, "store": {"url": url},
                 "improve": {"min_new_samples": 20, "live_ab": False}}  # fmt: skip
    cfg = load_config(overrides=overrides, environ={})
    init_keys(cfg.paths.keys)
    store = FeedbackStore(url)
    _good_feedback(store, 40, "first")  # the api domain is due
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(overrides))

    def build(cfg, progress=None):  # the real orchestrator; engines that need no Ray
        return Orchestrator(cfg, FeedbackStore(url), Registry(cfg), Trainer(tmp_path / "c"),
                            Evaluator(), None, base_model="builtin:test")  # fmt: skip

    monkeypatch.setattr(improve, "build_orchestrator", build)
    held = Leases(store).hold("improve:api", "other-host:42", ttl_s=60, what="round for api")
    try:
        state._config = None
        r = CliRunner().invoke(app, ["--config", str(cfg_file), "improve", "--once", "--json"])
        assert r.exit_code == 3, r.output
        [out] = json.loads(r.stdout)
        assert out["action"] == "busy" and "other-host:42" in out["reason"]
    finally:
        held.close()
    state._config = None
    r = CliRunner().invoke(app, ["--config", str(cfg_file), "improve", "--once", "--json"])
    assert r.exit_code == 0, r.output  # the lease is free: the round runs
    assert [o["action"] for o in json.loads(r.stdout)] == ["promoted"]
    store.close()
