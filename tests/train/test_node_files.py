"""What a Ray Train worker reads resolves on its own node (qlp_ray.train.node_files): the loop
configs carry no path under the driver's home; the builtin model resolves into the worker
node's home; a local base model must exist on the node; small files travel as bytes; the
metrics travel in the checkpoints. No Ray cluster here (the controller callbacks are called
directly)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from qlp_ray.core.config import QLPConfig, TrainConfig
from qlp_ray.core.errors import ConfigError
from qlp_ray.models.tiny import READY_FILE, tiny_model_dir
from qlp_ray.train.node_files import (
    base_model_ref,
    materialize,
    model_ref,
    resolve_base_on_node,
    restore_metrics_from,
    save_metrics_to,
    ship_dir,
)
from qlp_ray.train.ray_train import sft_loop_config
from qlp_ray.train.run_metrics import append_metrics, read_metrics

RECORDS = [{"prompt": "p", "completion": "c"}]


def _strings(value: Any) -> list[str]:
    """Every string (and bytes, decoded) anywhere in a nested config."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    return [value] if isinstance(value, str) else []


def _fake_built(cfg: QLPConfig) -> Path:
    """Mark the builtin model built in ``cfg``'s home (as a node that built it has it)."""
    path = tiny_model_dir(cfg)
    path.mkdir(parents=True)
    (path / READY_FILE).write_text("{}")
    return path


def test_the_sft_loop_config_names_nothing_under_the_drivers_home(tmp_path, monkeypatch):
    """The config a worker gets: the base model as a reference, the records and the
    meta-init's bytes; no path of the driver's home (which another node does not have)."""
    monkeypatch.delenv("QLP_HOME", raising=False)
    driver = tmp_path / "driver-home"
    cfg = QLPConfig.model_validate({"paths": {"home": str(driver), "node_home": True}})
    weights = driver / "registry" / "meta-init" / "adapter_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"meta-init weights")
    sha = hashlib.sha256(b"meta-init weights").hexdigest()
    train_cfg = TrainConfig(steps=3)
    init = {"weights": str(weights), "sha256": sha}
    config = sft_loop_config(cfg, train_cfg, train_records=RECORDS, eval_records=RECORDS,
                             use_gpu=False, init=init)  # fmt: skip
    assert config["base_model"]["kind"] == "builtin"
    assert config["init"] == {"name": weights.name, "data": b"meta-init weights", "sha256": sha}
    # only the configured home itself, which a worker replaces by its own QLP_HOME
    leaks = [s for s in _strings(config) if str(driver) in s and s != str(driver)]
    assert leaks == [], leaks
    assert "metrics_file" not in config and "base_path" not in config


def test_the_builtin_model_resolves_in_the_worker_nodes_home(tmp_path, monkeypatch):
    """Under paths.node_home a worker's QLP_HOME wins: the driver's home is never read."""
    monkeypatch.delenv("QLP_HOME", raising=False)
    driver_cfg = QLPConfig.model_validate(
        {"paths": {"home": str(tmp_path / "driver"), "node_home": True}}
    )
    ref = base_model_ref(driver_cfg)
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "node-b"))  # the worker node's environment
    node_cfg = QLPConfig.model_validate({"paths": {"home": str(tmp_path / "node-b")}})
    built = _fake_built(node_cfg)
    assert resolve_base_on_node(json.loads(json.dumps(ref)), node="node-b") == str(built)
    assert not (tmp_path / "driver").exists()
    # without node_home every node uses the configured home (one home, or a shared mount)
    shared = QLPConfig.model_validate({"paths": {"home": str(tmp_path / "shared")}})
    built = _fake_built(shared)
    assert resolve_base_on_node(base_model_ref(shared), node="n") == str(built)


def test_a_local_base_model_must_exist_on_the_worker_node(tmp_path):
    model = tmp_path / "models" / "llama"
    cfg = QLPConfig.model_validate({"model": {"base_model": str(model)}})
    ref = base_model_ref(cfg)  # need not exist on the driver
    assert ref == {"kind": "path", "name": str(model), "path": str(model)}
    with pytest.raises(ConfigError) as err:
        resolve_base_on_node(ref, node="worker-7")
    message = str(err.value)
    assert str(model) in message and "does not exist on node worker-7" in message
    model.mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no config.json on node worker-7"):
        resolve_base_on_node(ref, node="worker-7")
    (model / "config.json").write_text("{}")
    assert resolve_base_on_node(ref, node="worker-7") == str(model)
    assert resolve_base_on_node(str(model), node="worker-7") == str(model)  # a plain path


def test_relative_paths_hub_ids_and_unknown_builtins(tmp_path):
    (tmp_path / "m").mkdir()
    rel = QLPConfig.model_validate({"model": {"base_model": "m"}})
    # a directory relative to the driver's cwd: made absolute (a worker's cwd is Ray's)
    assert base_model_ref(rel, cwd=tmp_path) == {"kind": "path", "name": "m",
                                                 "path": str(tmp_path / "m")}  # fmt: skip
    dot = QLPConfig.model_validate({"model": {"base_model": "./models/x"}})
    assert base_model_ref(dot, cwd=tmp_path)["path"] == str(tmp_path / "models" / "x")
    hub = QLPConfig.model_validate({"model": {"base_model": "Qwen/Qwen2.5-0.5B"}})
    ref = base_model_ref(hub, cwd=tmp_path)
    assert ref == {"kind": "hub", "name": "Qwen/Qwen2.5-0.5B"}
    assert resolve_base_on_node(ref, node="n") == "Qwen/Qwen2.5-0.5B"  # the node's HF cache
    bad = QLPConfig.model_validate({"model": {"base_model": "builtin:huge"}})
    with pytest.raises(ConfigError, match="unknown builtin model"):
        base_model_ref(bad)


def test_adapter_files_travel_as_bytes(tmp_path):
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_model.safetensors").write_bytes(b"\x00\x01weights")
    (src / "sub" / "x.json").write_text('{"a": 1}')
    shipped = model_ref("Qwen/Qwen2.5-0.5B", src)
    assert shipped["base"] == "Qwen/Qwen2.5-0.5B"
    assert shipped["adapter"] == {"adapter_model.safetensors": b"\x00\x01weights",
                                  "sub/x.json": b'{"a": 1}'}  # fmt: skip
    out = materialize(shipped["adapter"], tmp_path / "worker")
    assert (out / "adapter_model.safetensors").read_bytes() == b"\x00\x01weights"
    assert (out / "sub" / "x.json").read_text() == '{"a": 1}'
    with pytest.raises(ConfigError, match="leaves its directory"):
        materialize({"../evil": b"x"}, tmp_path / "worker")
    with pytest.raises(ConfigError, match="is not a directory"):
        ship_dir(tmp_path / "missing")


def test_metrics_travel_in_checkpoints_and_a_resume_drops_the_lines_after_it(tmp_path):
    local = tmp_path / "rank0" / "metrics.jsonl"
    local.parent.mkdir()
    for step in (0, 10, 20, 25):
        append_metrics(local, {"step": step, "loss": 1.0 / (step + 1)})
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_metrics_to(local, checkpoint)
    save_metrics_to(None, tmp_path)  # ranks > 0 keep none: nothing happens
    resumed = tmp_path / "other-node" / "metrics.jsonl"  # the restarted rank 0, elsewhere
    resumed.parent.mkdir()
    restore_metrics_from(checkpoint, resumed, 20)
    assert [r["step"] for r in read_metrics(resumed)] == [0, 10, 20]
    restore_metrics_from(tmp_path / "empty", tmp_path / "none.jsonl", 5)  # no file: no lines
    assert not (tmp_path / "none.jsonl").exists()


def test_the_drivers_metrics_file_is_written_from_the_reports_and_the_final_checkpoint(
    tmp_path,
):
    """The controller (on the driver's node) appends rank 0's reports live; a restart that
    logs steps again drops them; the final checkpoint's file then replaces the live one."""
    from qlp_ray.train.ray_metrics import (
        STEP_STATS,
        live_metrics_callback,
        metrics_from_checkpoint,
        step_stats_callback,
    )

    path = tmp_path / "runs" / "r1" / "metrics.jsonl"
    [live] = live_metrics_callback(path)
    assert live_metrics_callback(None) == []
    report = live.after_report
    report(None, [{"step": 0, "eval_loss": 3.0}, {"step": 0, "eval_loss": 3.0}], None)
    report(None, [{"step": 10, "loss": 2.0}], None)
    report(None, [{"step": 10, "loss": 2.0, "checkpoint_step": 10}], object())  # checkpoint
    report(None, [{"step": 15, "loss": 1.5}], None)
    report(None, [{"step": 12, "loss": 1.9}], None)  # restarted from the step-10 checkpoint
    report(None, [{"step": 20, "eval_loss": 1.0, "finished": 1.0}], object())
    assert [(r["step"], r.get("loss")) for r in read_metrics(path)] == [
        (0, None), (10, 2.0), (12, 1.9)
    ]  # fmt: skip
    final = tmp_path / "final"
    final.mkdir()
    assert not metrics_from_checkpoint(final, path)  # none in it: the live lines stay
    append_metrics(final / "metrics.jsonl", {"step": 20, "loss": 1.0})
    assert metrics_from_checkpoint(final, path)
    assert read_metrics(path) == [{"step": 20, "loss": 1.0}]
    # PPO: batches of steps per report; a restarted group repeats steps from its checkpoint
    ppo = tmp_path / "ppo.jsonl"
    [steps] = step_stats_callback(ppo)
    steps.after_report(None, [{STEP_STATS: [(1, {"loss": 0.5}), (2, {"loss": 0.4})]}], None)
    steps.after_report(None, [{STEP_STATS: [(3, {"loss": 0.3})]}], None)
    steps.after_report(None, [{STEP_STATS: [(3, {"loss": 0.35}), (4, {"loss": 0.2})]}], None)
    assert [(r["step"], r["loss"]) for r in read_metrics(ppo)] == [(1, 0.5), (2, 0.4),
                                                                  (3, 0.35), (4, 0.2)]  # fmt: skip
