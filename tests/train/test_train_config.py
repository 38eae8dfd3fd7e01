"""PEFT config building and training-data checks (fast, no model, no Ray)."""

from __future__ import annotations

import json
import os

import pytest
from peft import AdaLoraConfig, LoraConfig, TaskType

from qlp_ray.core.config import TrainConfig
from qlp_ray.core.errors import ConfigError, TrainingError
from qlp_ray.train.peft_setup import build_peft_config
from qlp_ray.train.ray_train import load_training_data


def test_lora_config_from_train_section():
    cfg = TrainConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft = build_peft_config(cfg, total_steps=10)
    assert isinstance(peft, LoraConfig) and not isinstance(peft, AdaLoraConfig)
    assert peft.task_type == TaskType.CAUSAL_LM
    assert (peft.r, peft.lora_alpha, set(peft.target_modules)) == (4, 8, {"q_proj", "v_proj"})


def test_adalora_config_carries_schedule():
    cfg = TrainConfig(method="adalora", steps=30)
    peft = build_peft_config(cfg, total_steps=30)
    assert isinstance(peft, AdaLoraConfig)
    assert (peft.total_step, peft.init_r, peft.target_r) == (30, 12, 4)
    assert (peft.tinit, peft.tfinal, peft.deltaT) == (5, 5, 2)
    assert peft.orth_reg_weight == cfg.adalora.orth_reg_weight


@pytest.mark.parametrize(
    ("cfg", "steps", "needle"),
    [
        (TrainConfig(method="adalora", steps=30), 10, "train.adalora.tinit"),
        (TrainConfig(target_modules=[]), 10, "train.target_modules"),
        (TrainConfig(method="adalora", adalora={"init_r": 4, "target_r": 8}), 60, "target_r"),
        (TrainConfig(), 0, "train.steps"),
    ],
)
def test_peft_config_errors_name_the_option(cfg, steps, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_peft_config(cfg, total_steps=steps)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(i, domain="api"):
    return {
        "instruction": f"Design endpoint number {i}.",
        "input": "",
        "output": f"Use GET /items/{i} and return 404 when missing.",
        "domain": domain,
        "validation_score": 0.9,
    }


def test_heldout_split_is_deterministic_and_disjoint(tmp_path):
    data = _write(tmp_path / "api.jsonl", [_row(i) for i in range(40)])
    a = load_training_data("api", data, eval_fraction=0.15, seed=3)
    b = load_training_data("api", data, eval_fraction=0.15, seed=3)
    assert a.heldout_source == "split"
    assert len(a.heldout) == 6 and len(a.train) == 34
    assert [c.instruction for c in a.heldout] == [c.instruction for c in b.heldout]
    assert not {c.instruction for c in a.heldout} & {c.instruction for c in a.train}


def test_heldout_file_is_used_when_given(tmp_path):
    data = _write(tmp_path / "t.jsonl", [_row(i) for i in range(5)])
    held = _write(tmp_path / "h.jsonl", [_row(i) for i in range(100, 103)])
    d = load_training_data("api", data, held)
    assert (len(d.train), len(d.heldout), d.heldout_source) == (5, 3, "file")


def test_wrong_domain_is_refused(tmp_path):
    data = _write(tmp_path / "t.jsonl", [_row(1), _row(2, "devops"), _row(3, "ml")])
    with pytest.raises(TrainingError, match=r"2 of 3 records .*'devops', 'ml'.* not 'api'"):
        load_training_data("api", data)


def test_empty_and_missing_data_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrainingError, match="holds no records"):
        load_training_data("api", empty)
    with pytest.raises(TrainingError, match="not found"):
        load_training_data("api", tmp_path / "nope.jsonl")
    one = _write(tmp_path / "one.jsonl", [_row(1)])
    with pytest.raises(TrainingError, match="at least 2"):
        load_training_data("api", one)


def test_cli_train_rejects_bad_arguments_before_starting_ray(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qlp_ray.cli import app

    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    missing = runner.invoke(app, ["train", "--domain", "api", "--data", str(tmp_path / "x.jsonl")])
    assert missing.exit_code == 1
    assert "--data file not found" in missing.output
    data = _write(tmp_path / "t.jsonl", [_row(i) for i in range(3)])
    bad = runner.invoke(app, ["train", "--domain", "api", "--data", str(data), "--method", "dora"])
    assert bad.exit_code == 1
    assert "--method: method must be 'sft', 'adalora', 'qlora', 'dpo'" in " ".join(
        bad.output.split()
    )
    sched = runner.invoke(app, ["train", "--domain", "api", "--data", str(data),
                                "--scheduler", "step", "--grad-accum", "2"])  # fmt: skip
    assert sched.exit_code == 1
    assert "`train.lr_scheduler`: Input should be 'linear', 'cosine' or 'constant'" in " ".join(
        sched.output.split()
    )
    assert not (tmp_path / "home" / "runs").exists()


def test_one_list_of_peft_methods_and_every_check_derives_from_it():
    from typing import get_args

    from pydantic import ValidationError

    from qlp_ray.serve.http.routes_jobs import Hyperparameters
    from qlp_ray.train import PEFT_METHODS, methods_phrase

    assert PEFT_METHODS == get_args(TrainConfig.model_fields["method"].annotation)
    assert PEFT_METHODS == ("lora", "adalora", "qlora")
    assert methods_phrase() == "'lora', 'adalora' or 'qlora'"
    for method in PEFT_METHODS:  # the REST API takes every method the config takes
        assert Hyperparameters(method=method).method == method
        assert TrainConfig(method=method).method == method
    with pytest.raises(ValidationError):
        Hyperparameters(method="dora")
    bad = TrainConfig.model_construct(method="dora")
    with pytest.raises(ConfigError, match="must be 'lora', 'adalora' or 'qlora', got 'dora'"):
        build_peft_config(bad, total_steps=10)


def test_ray_train_controller_polls_quickly_unless_the_user_chose(monkeypatch) -> None:
    from qlp_ray.train.placement import POLL_ENV, quick_controller_polls

    monkeypatch.delenv(POLL_ENV, raising=False)
    quick_controller_polls()
    assert os.environ[POLL_ENV] == "0.5"
    monkeypatch.setenv(POLL_ENV, "3")
    quick_controller_polls()
    assert os.environ[POLL_ENV] == "3"
