"""The one train → evaluate → register pipeline with its hooks (no Ray, no model: the
adapters are small real safetensors files, the registry signs them for real)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import TrainingError
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.signing import init_keys
from qlp_ray.registry.store import Registry
from qlp_ray.train.pipeline import TrainedAdapter, register_adapter, run_pipeline
from qlp_ray.tune.search import TuneOutcome


@dataclass
class Verdict:
    register: bool
    reason: str


def _adapter(path: Path, value: float) -> Path:
    path.mkdir(parents=True)
    save_file({"w": np.full((2, 2), value, np.float32)}, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"r": 2}))
    return path


@pytest.fixture
def cfg(tmp_path):
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "home")}}, environ={})
    init_keys(cfg.paths.keys)
    return cfg


def test_hooks_gate_shape_and_deduplicate_the_registration(cfg, tmp_path):
    trained = TrainedAdapter(_adapter(tmp_path / "a", 1.0), {"loss": 0.5}, {"centroid": [1.0]})
    calls = []

    def train():
        calls.append("train")
        return trained

    rejected = run_pipeline(cfg, domain="api", train=train, base_model="builtin:test",
                            evaluate=lambda t: Verdict(False, "worse than production"))  # fmt: skip
    assert rejected.record is None and rejected.verdict.reason == "worse than production"
    assert Registry(cfg).storage.versions("api") == []

    seen = []
    done = run_pipeline(
        cfg,
        domain="api",
        train=train,
        evaluate=lambda t: Verdict(True, "better"),
        metadata=lambda t, v: {**t.metadata, "why": v.reason},
        make_current=False,
        base_model="builtin:test",
        progress=seen.append,
    )
    rec = done.record
    assert (rec.adapter_id, rec.version, rec.signed) == ("api", 1, True)
    assert rec.metadata["why"] == "better" and rec.metadata["centroid"] == [1.0]
    assert seen == ["signing and registering api", "registered api v1 (signed=True)"]
    assert Registry(cfg).storage.versions("api") == [1]

    again = run_pipeline(cfg, domain="api", train=train, base_model="builtin:test",
                         registered=lambda: rec)  # fmt: skip
    assert again.record is rec and Registry(cfg).storage.versions("api") == [1]
    assert calls == ["train"] * 3


def test_tune_best_trial_registers_with_its_tuning_metadata(cfg, tmp_path):
    out = tmp_path / "best"
    _adapter(out / "adapter", 2.0)
    outcome = TuneOutcome({"rank": 8}, 0.42, [], out)
    rec = run_pipeline(cfg, domain="api", adapter_id="api-tuned", train=outcome.best_adapter,
                       base_model="builtin:test").record  # fmt: skip
    assert rec.adapter_id == "api-tuned" and rec.domain == "api" and rec.signed
    assert rec.metadata["metrics"] == {"eval_loss": 0.42}
    assert rec.metadata["tune"] == {"config": {"rank": 8}, "study": ""}
    with pytest.raises(TrainingError, match="the best trial left no adapter to register"):
        TuneOutcome({}, 1.0, [], tmp_path / "empty").best_adapter()


def test_register_adapter_uses_the_configured_base_model(cfg, tmp_path):
    rec = register_adapter(cfg, _adapter(tmp_path / "a", 3.0), adapter_id="api", domain="api",
                           metadata={"method": "lora"})  # fmt: skip
    assert rec.base_model == base_model_id(cfg)
    assert rec.metadata["method"] == "lora"
