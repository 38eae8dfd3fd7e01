"""Orchestrator control flow with the real store and signed registry; the engines are
small test doubles (a trainer writing real safetensors, an evaluator reading a marker).
The real-engine end-to-end run is tests/e2e (tiny model, Ray Train, Serve)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from qlp_ray.core.config import load_config
from qlp_ray.improve.orchestrator import Orchestrator, TrainedCandidate
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.signing import init_keys
from qlp_ray.registry.store import Registry
from qlp_ray.store.database import FeedbackStore

BASE_PPL = 10.0


class Trainer:
    """Writes a real adapter directory; ``next_ppl`` is the held-out perplexity it will have."""

    def __init__(self, out: Path) -> None:
        self.out, self.calls, self.next_ppl = out, [], 8.0

    def train(self, domain, train_path, heldout_path):
        n = len(train_path.read_text().splitlines())
        self.calls.append((domain, n))
        d = self.out / f"{domain}-{len(self.calls)}"
        d.mkdir(parents=True)
        save_file({"w": np.full((2, 2), len(self.calls), np.float32)},
                  str(d / "adapter_model.safetensors"))  # fmt: skip
        (d / "adapter_config.json").write_text(json.dumps({"r": 2, "ppl": self.next_ppl}))
        return TrainedCandidate(d, {"train_loss": 1.0}, {"trained_on": n})


class Evaluator:
    def __init__(self) -> None:
        self.fail_once = False

    def evaluate(self, adapter_dir, records):
        assert records and all("instruction" in r for r in records)
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("evaluator crashed")
        if adapter_dir is None:
            return {"perplexity": BASE_PPL}
        return {"perplexity": json.loads((adapter_dir / "adapter_config.json").read_text())["ppl"]}


class Splitter:
    def __init__(self) -> None:
        self.started, self.stopped = [], []

    def start(self, name, adapter_id, control, treatment, share):
        self.started.append((name, adapter_id, control, treatment, share))

    def stop(self, name):
        self.stopped.append(name)


def _good_feedback(store: FeedbackStore, n: int, tag: str) -> None:
    for i in range(n):
        rid = store.record_request(model="base", prompt=f"{tag} question {i}",
                                   response=f"{tag} answer {i}", domain="api")  # fmt: skip
        store.record_feedback(rid, "thumbs", 1)


def _experiment_traffic(store, name, arm, n, ups):
    for i in range(n):
        rid = store.record_request(model="api", prompt=f"{arm} {i}", response="r", domain="api",
                                   experiment=name, variant=arm)  # fmt: skip
        store.record_feedback(rid, "thumbs", 1 if i < ups else -1)


@pytest.fixture
def env(tmp_path):
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "home")},
                                 "improve": {"min_new_samples": 20, "experiment_min_trials": 30}},
                      environ={})  # fmt: skip
    init_keys(cfg.paths.keys)
    store = FeedbackStore(f"sqlite:///{cfg.paths.root / 'feedback.db'}")
    trainer, evaluator, splitter = Trainer(tmp_path / "cands"), Evaluator(), Splitter()

    def make():
        return Orchestrator(cfg, store, Registry(cfg), trainer, evaluator, splitter,
                            base_model="builtin:test")  # fmt: skip

    yield cfg, store, trainer, evaluator, splitter, make
    store.close()


def test_full_loop_promotes_better_and_keeps_old_on_bad_data(env):
    cfg, store, trainer, evaluator, splitter, make = env
    _good_feedback(store, 40, "first")
    [out] = make().run_cycle()
    assert out.action == "promoted" and "no production" not in out.reason
    assert out.numbers["production"] == BASE_PPL and out.numbers["improvement"] == pytest.approx(
        0.2
    )
    reg = Registry(cfg)
    assert (
        reg.get("api").version == 1 and reg.get("api").metadata["trained_on"] == trainer.calls[0][1]
    )

    [again] = make().run_cycle()  # nothing new: no training
    assert again.action == "skipped" and len(trainer.calls) == 1

    _good_feedback(store, 40, "second")
    trainer.next_ppl = 7.0  # 12.5% better than v1's 8.0
    [out] = make().run_cycle()
    assert out.action == "experiment_started" and out.numbers["candidate_version"] == 2
    assert splitter.started == [("improve-api-v2", "api", 1, 2, 0.5)]
    assert reg.get("api").version == 1  # production serves until the experiment decides

    # A restart mid-experiment: no retraining, no second registration, still running.
    [out] = make().run_cycle()
    assert out.action == "experiment_running" and len(trainer.calls) == 2
    assert reg.storage.versions("api") == [1, 2]

    _experiment_traffic(store, "improve-api-v2", "control", 40, 20)
    _experiment_traffic(store, "improve-api-v2", "treatment", 40, 36)
    [out] = make().run_cycle()
    assert out.action == "promoted" and out.numbers["treatment_rate"] == 0.9
    assert reg.get("api").version == 2 and splitter.stopped == ["improve-api-v2"]
    assert len(trainer.calls) == 2  # the cycle that ends an experiment trains nothing else

    # Bad data: the candidate is worse on held-out -> production stays.
    _good_feedback(store, 40, "third")
    trainer.next_ppl = 9.0
    outs = make().run_cycle()
    assert outs[-1].action == "rejected" and "does not beat" in outs[-1].reason
    assert reg.get("api").version == 2 and reg.storage.versions("api") == [1, 2]
    kinds = [e.kind for e in audit_for(cfg).events("api", ("promote", "rollback", "decision"))]
    assert kinds.count("promote") == 2 and kinds[-1] == "decision"


def test_restart_after_crash_reuses_the_trained_candidate(env):
    cfg, store, trainer, evaluator, splitter, make = env
    _good_feedback(store, 40, "x")
    evaluator.fail_once = True
    with pytest.raises(RuntimeError, match="evaluator crashed"):
        make().run_cycle()
    assert len(trainer.calls) == 1
    [out] = make().run_cycle()
    assert out.action == "promoted" and len(trainer.calls) == 1  # no double training
    [out] = make().run_cycle()
    assert out.action == "skipped" and Registry(cfg).storage.versions("api") == [1]


def test_experiment_rollback_keeps_control(env):
    cfg, store, trainer, evaluator, splitter, make = env
    _good_feedback(store, 40, "a")
    make().run_cycle()
    _good_feedback(store, 40, "b")
    trainer.next_ppl = 6.0
    make().run_cycle()
    _experiment_traffic(store, "improve-api-v2", "control", 40, 34)
    _experiment_traffic(store, "improve-api-v2", "treatment", 40, 18)
    outs = make().run_cycle()
    assert outs[0].action == "kept" and "<" in outs[0].reason
    assert Registry(cfg).get("api").version == 1 and splitter.stopped == ["improve-api-v2"]
    assert make().running_experiments() == []


def test_cli_improve_once_reports_decisions(tmp_path, monkeypatch):
    """`qlp improve --once` on a store with too little feedback: a report, no training."""
    from typer.testing import CliRunner

    from qlp_ray.cli import app

    home = tmp_path / "home"
    monkeypatch.setenv("QLP_HOME", str(home))
    monkeypatch.setenv("QLP_IMPROVE__MIN_NEW_SAMPLES", "5")
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    _good_feedback(store, 3, "few")
    store.close()
    result = CliRunner().invoke(app, ["improve", "--once", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    new = row["numbers"]["new"]  # the training share of the 3 (some go to held-out)
    assert 1 <= new <= 3 and row["domain"] == "api" and row["action"] == "skipped"
    assert row["reason"] == f"{new} new samples < 5"


def test_heldout_mixes_feedback_and_the_bundled_yardstick(env):
    from qlp_ray.data.capsules import load_capsules, sample_path
    from qlp_ray.improve.feedback_data import DomainExamples

    cfg, store, trainer, evaluator, splitter, make = env
    bundled = load_capsules(sample_path("api", "heldout"))
    mine = [
        {"instruction": f"q{i}", "input": "", "output": "a", "domain": "api"} for i in range(50)
    ]
    recs = make().heldout_records("api", DomainExamples("api", [], mine))
    assert len(recs) == cfg.improve.max_eval_examples == 64
    assert recs[:32] == mine[:32] and recs[32]["instruction"] == bundled[0].instruction
    few = make().heldout_records("api", DomainExamples("api", [], mine[:5]))
    assert len(few) == 5 + min(len(bundled), 59)
    assert make().heldout_records("nodomain", DomainExamples("nodomain", [], mine[:3])) == mine[:3]
