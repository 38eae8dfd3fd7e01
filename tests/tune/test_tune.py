"""Ray Tune + Optuna + ASHA over LoRA SFT trials, each a Ray Train run of the SFT worker of
``qlp train``, checkpoints on S3; the study is read back from its Optuna RDB storage and the
trials from MLflow."""

from __future__ import annotations

import json

import pytest
import torch

from qlp_ray.core.config import REPO_ROOT, load_config
from qlp_ray.core.errors import ConfigError
from qlp_ray.registry.s3 import make_client
from qlp_ray.tune.search import load_space, parse_space, run_tune
from tests.helpers.moto_s3 import moto_s3
from tests.helpers.tiny_lm import grammar_texts, make_model, make_tokenizer, pretrain

pytestmark = pytest.mark.integration


def _records(texts):
    return [
        {"prompt": " ".join(t.split()[:3]), "completion": " " + " ".join(t.split()[3:])}
        for t in texts
    ]


def test_shipped_space_parses_and_bad_space_is_named():
    space = load_space(REPO_ROOT / "configs" / "tune" / "lora.yaml")
    assert set(space) == {"rank", "alpha", "dropout", "learning_rate", "target_modules"}
    with pytest.raises(ConfigError, match="unknown hyperparameter 'epochs'"):
        parse_space({"epochs": {"type": "choice", "values": [1]}})
    with pytest.raises(ConfigError, match="'learning_rate' needs 0 < low < high"):
        parse_space({"learning_rate": {"type": "loguniform", "low": 0, "high": 1}})


@pytest.mark.timeout(900)
def test_three_trials_best_beats_worst(ray_local, tmp_path):
    torch.set_num_threads(1)
    tok = make_tokenizer()
    texts = grammar_texts(60)
    base = pretrain(make_model(tok), tok, steps=5, texts=texts[:48])
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir, safe_serialization=True)
    tok.save_pretrained(base_dir)
    cfg = load_config(
        environ={},
        overrides={
            "paths": {"home": str(tmp_path / "home")},
            "model": {"base_model": str(base_dir), "max_seq_len": 32},
            "tune": {"steps": 8, "eval_every": 4, "max_concurrent": 1, "seed": 0},
            "train": {"batch_size": 8, "warmup_ratio": 0.0},
        },
    )
    space = parse_space(
        {
            "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 3e-2},
            "rank": {"type": "choice", "values": [2, 8]},
        }
    )
    # trial checkpoints on S3 (train.storage_uri), as on a cluster whose nodes share no disk
    with moto_s3("qlp-tune") as s3:
        cfg.s3 = s3
        cfg.train.storage_uri = "s3://qlp-tune/runs"
        out = run_tune(
            cfg,
            domain="api",
            space=space,
            trials=3,
            output_dir=tmp_path / "best",
            records=_records(texts[:48]),
            eval_records=_records(texts[48:]),
        )
        keys = [o["Key"] for o in make_client(s3).list_objects_v2(Bucket="qlp-tune")["Contents"]]
    assert any(k.startswith("runs/tune-api-") and k.endswith("adapter_model.safetensors")
               for k in keys), keys[:20]  # fmt: skip
    assert not (tmp_path / "home" / "runs").exists()  # nothing on the local disk
    losses = [t["eval_loss"] for t in out.trials if t["eval_loss"] is not None]
    assert len(out.trials) == 3 and len(losses) == 3, out.trials
    finished = [t["eval_loss"] for t in out.trials if t["checkpoint_path"]]
    assert finished, out.trials
    assert out.best_eval_loss == min(finished) < max(losses)
    saved = json.loads((tmp_path / "best" / "tune_best.json").read_text())
    assert saved["config"] == out.best_config and saved["eval_loss"] == out.best_eval_loss
    assert (tmp_path / "best" / "adapter" / "adapter_model.safetensors").is_file()
    _assert_study_and_runs(cfg, out)


def _assert_study_and_runs(cfg, out) -> None:
    import optuna
    from mlflow import MlflowClient

    home = cfg.paths.root
    # the Optuna study, loaded from its default SQLite storage: one trial per Tune trial,
    # with the held-out loss each trial ended on
    storage = f"sqlite:///{home / 'optuna.db'}"
    assert out.optuna_storage == storage and out.study_name.startswith("tune-api-")
    study = optuna.load_study(study_name=out.study_name, storage=storage)
    assert len(study.trials) == 3
    values = sorted(t.value for t in study.trials if t.value is not None)
    assert values == pytest.approx(sorted(t["eval_loss"] for t in out.trials))
    assert {tuple(sorted(t.params)) for t in study.trials} == {("learning_rate", "rank")}
    # MLflow: the search is a run, every trial a child run with its per-step losses
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    parent = client.get_run(out.tracking_run[1])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(out.best_eval_loss)
    assert parent.data.tags["qlp.optuna_study"] == out.study_name
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert len(children) == 3
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED")
        assert child.data.params["train.steps"] == "8"
        evals = client.get_metric_history(child.info.run_id, "eval_loss")
        assert [p.step for p in evals][:2] == [0, 4]
        assert len(client.get_metric_history(child.info.run_id, "loss")) >= 4
    best = client.get_run(out.best_trial_run[1])
    assert best.data.metrics["eval_loss"] == pytest.approx(out.best_eval_loss)
