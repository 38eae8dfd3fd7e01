"""The improve loop's DPO and live-A/B logic without Ray: preference pairs from stored
feedback, the method choice, the experiment decision on stats (with its time budget), the
experiment spec the splitter posts, and one orchestrator pass (DPO candidate -> gate ->
experiment -> rollback) on the real store and signed registry with small engine doubles.
The real engines over HTTP: tests/e2e/test_improve_dpo_ab.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.experiments.ab import ExperimentSpec
from qlp_ray.improve.decisions import VariantStats, choose_method, judge_experiment
from qlp_ray.improve.feedback_data import collect_examples
from qlp_ray.improve.orchestrator import Orchestrator, TrainedCandidate
from qlp_ray.improve.splitter import experiment_spec
from qlp_ray.models.prompt import format_prompt
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.signing import init_keys
from qlp_ray.registry.store import Registry
from qlp_ray.store.database import FeedbackStore


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


def _ask(store, prompt, response, domain="api"):
    return store.record_request(model=domain, prompt=prompt, response=response, domain=domain)


def test_pairs_from_corrections_and_differently_rated_answers(store):
    rid = _ask(store, "How do I page?", "use offset")
    store.record_feedback(rid, "thumbs", -1)
    store.record_feedback(rid, "correction", payload={"text": "Contract: cursor pages"})
    templated = format_prompt("List users")  # a chat request is stored templated
    good, bad = _ask(store, templated, "Contract: GET /users"), _ask(store, templated, "idk")
    store.record_feedback(good, "thumbs", 1)
    store.record_feedback(bad, "rating", 1)
    lone = _ask(store, "Ping?", "pong")  # one rated answer alone: no pair
    store.record_feedback(lone, "thumbs", 1)

    ex = collect_examples(store, "api", min_score=0.85, heldout_fraction=0.01)
    pairs = {(p.prompt, p.chosen, p.rejected) for p in ex.pairs_train + ex.pairs_heldout}
    assert pairs == {
        (format_prompt("How do I page?"), "Contract: cursor pages", "use offset"),
        (templated, "Contract: GET /users", "idk"),
    }
    # SFT rows: the correction and the thumbed-up answers, instruction without the template
    rows = {(r["instruction"], r["output"]) for r in ex.train + ex.heldout}
    assert ("List users", "Contract: GET /users") in rows and ("Ping?", "pong") in rows
    assert ex.size == len(ex.train) + len(ex.pairs_train)
    before = ex.data_hash
    store.record_feedback(lone, "correction", payload={"text": "Contract: 200 OK"})
    assert collect_examples(store, "api", min_score=0.85, heldout_fraction=0.01).data_hash != before


def test_method_choice():
    assert choose_method("auto", 40, 16, True)[0] == "dpo"
    assert choose_method("auto", 15, 16, True) == (
        "sft", "auto: 15 preference pairs < improve.min_pairs 16")  # fmt: skip
    assert choose_method("auto", 40, 16, False)[0] == "sft"  # DPO needs a parent
    assert choose_method("sft", 400, 16, True)[0] == "sft"
    assert choose_method("dpo", 3, 16, False)[0] == "dpo"
    with pytest.raises(InvalidRequest, match="no preference pairs"):
        choose_method("dpo", 0, 16, True)


def test_experiment_decision_on_stats_and_budgets():
    win = judge_experiment(VariantStats(20, 4), VariantStats(20, 16), min_trials=10)
    assert win.outcome == "promote" and win.numbers["z"] > 3 and win.p_value < 0.001
    lose = judge_experiment(VariantStats(20, 16), VariantStats(20, 4), min_trials=10)
    assert lose.outcome == "rollback" and lose.numbers["p_worse"] < 0.001
    tie = VariantStats(20, 10), VariantStats(20, 11)
    assert judge_experiment(*tie, min_trials=10).outcome == "continue"
    assert judge_experiment(*tie, min_trials=10, max_trials=20).outcome == "rollback"
    late = judge_experiment(*tie, min_trials=10, elapsed_s=61, max_s=60)
    assert late.outcome == "rollback" and "60 s" in late.reason
    few = VariantStats(3, 3), VariantStats(2, 0)
    assert judge_experiment(*few, min_trials=10, elapsed_s=5, max_s=60).outcome == "continue"
    assert judge_experiment(*few, min_trials=10, elapsed_s=90, max_s=60).outcome == "rollback"


def test_experiment_spec_is_a_valid_weighted_split():
    spec = ExperimentSpec.model_validate(experiment_spec("improve-api-v3", "api", 2, 3, 0.25))
    assert spec.applies_to == ["api"] and spec.strategy == "weighted"
    assert [(v.name, v.target, v.weight) for v in spec.variants] == [
        ("control", "api@2", 0.75), ("treatment", "api@3", 0.25)]  # fmt: skip
    assert spec.success == "feedback"


# --- one orchestrator pass with doubles ---------------------------------------------------
class DPOTrainer:
    """Writes a real adapter dir whose config carries the preference margin it will score."""

    def __init__(self, out: Path) -> None:
        self.out, self.calls = out, []

    def train(self, domain, train_path, heldout_path):
        return self._write(domain, {"perplexity": 5.0})

    def train_dpo(self, domain, pairs, parent_dir, run_name):
        self.calls.append((domain, len(pairs), Path(parent_dir).name))
        return self._write(domain, {"margin": 1.5})

    def _write(self, domain, marker):
        d = self.out / f"{domain}-{len(list(self.out.glob('*'))) if self.out.exists() else 0}"
        d.mkdir(parents=True)
        save_file({"w": np.ones((2, 2), np.float32)}, str(d / "adapter_model.safetensors"))
        (d / "adapter_config.json").write_text(json.dumps({"r": 2, **marker}))
        return TrainedCandidate(d, {"train_loss": 0.5}, {"centroid": [1.0, 0.0]})


class PairEvaluator:
    def evaluate(self, adapter_dir, records):
        return {"perplexity": 10.0}

    def evaluate_pairs(self, adapter_dir, pairs):
        cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
        return {"preference_margin": cfg.get("margin", -2.0), "preference_accuracy": 0.5}


class StatsSplitter:
    def __init__(self) -> None:
        self.started, self.stopped, self.arms = [], [], None

    def start(self, name, adapter_id, control, treatment, share):
        self.started.append((name, control, treatment))

    def stats(self, name):
        return self.arms

    def stop(self, name):
        self.stopped.append(name)


def test_dpo_candidate_gate_experiment_rollback_audited(tmp_path):
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "home")},
                                 "improve": {"min_new_samples": 10, "min_pairs": 8,
                                             "experiment_min_trials": 10}},
                      environ={})  # fmt: skip
    init_keys(cfg.paths.keys)
    store = FeedbackStore(f"sqlite:///{cfg.paths.root / 'feedback.db'}")
    reg = Registry(cfg)
    v1 = DPOTrainer(tmp_path / "prod")._write("api", {"margin": -2.0})
    reg.register(v1.adapter_dir, adapter_id="api", domain="api", base_model="builtin:test")
    for i in range(30):
        rid = _ask(store, f"question {i}", f"bad answer {i}")
        store.record_feedback(rid, "correction", payload={"text": f"Contract: answer {i}"})
    trainer, splitter, ev = DPOTrainer(tmp_path / "cands"), StatsSplitter(), PairEvaluator()
    orch = Orchestrator(cfg, store, reg, trainer, ev, splitter, base_model="builtin:test",
                        preference_evaluator=ev)  # fmt: skip

    [out] = orch.run_cycle()
    assert out.action == "experiment_started", out
    assert out.numbers["metric"] == "preference_margin" and out.numbers["candidate"] == 1.5
    assert trainer.calls and trainer.calls[0][2] == "v1"  # DPO started from production v1
    assert splitter.started == [("improve-api-v2", 1, 2)]
    cand = reg.get("api", 2)
    assert reg.get("api").version == 1  # registered, not current
    assert cand.metadata["method"] == "dpo" and cand.metadata["parent"] == {
        "adapter_id": "api", "version": 1}  # fmt: skip
    assert cand.metadata["metrics"]["preference_margin"] == 1.5 and cand.metadata["data_hash"]

    splitter.arms = VariantStats(12, 3), VariantStats(12, 3)
    [out] = orch.run_cycle()
    assert out.action == "experiment_running" and not splitter.stopped

    splitter.arms = VariantStats(15, 12), VariantStats(15, 2)  # treatment worse
    [out] = orch.run_cycle()
    assert out.action == "kept" and splitter.stopped == ["improve-api-v2"]
    assert reg.get("api").version == 1
    log = audit_for(cfg).events("api", ("rollback", "decision"))
    rollback = [e for e in log if e.kind == "rollback"][-1]
    assert rollback.version == 1 and "v2 retired" in rollback.payload["reason"]
    decision = [e for e in log if e.kind == "decision"][-1].payload
    assert decision["outcome"] == "rollback" and decision["retired"] == 2
    assert decision["treatment_rate"] == pytest.approx(2 / 15) and decision["p_worse"] < 0.001
    assert orch.running_experiments() == []
    store.close()


def test_splitter_names_the_app_and_the_knobs_when_serve_is_down(tmp_path):
    import socket

    from qlp_ray.core.errors import ExternalEndpointError
    from qlp_ray.improve.engines import build_orchestrator
    from qlp_ray.improve.splitter import ServeExperimentSplitter

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "home")},
                                 "improve": {"experiment_url": url}}, environ={})  # fmt: skip
    splitter = ServeExperimentSplitter(cfg, timeout_s=2)
    with pytest.raises(ExternalEndpointError, match="improve.live_ab: false") as err:
        splitter.start("improve-api-v2", "api", 1, 2, 0.5)
    assert url in str(err.value) and "experiment_url" in str(err.value)
    splitter.close()
    off = cfg.model_copy(update={"improve": cfg.improve.model_copy(update={"live_ab": False})})
    assert build_orchestrator(off).splitter is None
    assert isinstance(build_orchestrator(cfg).splitter, ServeExperimentSplitter)
