"""Ray Train end to end on a real local Ray: SFT lowers held-out loss; train → sign → register.

Two Ray Train runs in total (each ~20–40 s on 2 cores): a 2-worker DDP LoRA run whose rank 0
is killed mid-run (it resumes from its checkpoint), and a 1-worker AdaLoRA run through
``train_and_register``, read back from MLflow.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from qlp_ray.data.capsules import file_sha256, load_capsules, sample_path
from qlp_ray.data.format import routing_text
from qlp_ray.registry import Registry
from qlp_ray.route.embeddings import get_embedder
from qlp_ray.train.pipeline import train_and_register
from qlp_ray.train.ray_train import train_adapter
from qlp_ray.train.sft import ADAPTER_FILES

pytestmark = pytest.mark.integration


@pytest.fixture
def train_cfg(tiny_cfg):
    """Small logical CPU share per worker: the session's Ray (tests/helpers/ray_start.py) may
    also host another module's work, and a Ray Train run that cannot be scheduled would wait
    forever."""
    tiny_cfg.train.cpus_per_worker = 0.25
    return tiny_cfg


def test_ray_train_two_workers_lowers_heldout_loss(ray_local, train_cfg):
    """Checkpoints every 10 steps; rank 0 is SIGKILLed at step 25: FailureConfig restarts
    both workers, which resume from the step-20 checkpoint and finish the 30 steps."""
    tiny_cfg = train_cfg
    result = train_adapter(
        tiny_cfg,
        domain="dataeng",
        data_path=sample_path("dataeng", "train"),
        heldout_path=sample_path("dataeng", "heldout"),
        method="lora",
        workers=2,
        steps=30,
        overrides={"checkpoint_every": 10, "lr_scheduler": "cosine", "max_failures": 1},
        _kill_at_step=25,
    )
    m = result.metrics
    assert (result.run_dir / "killed").is_file()  # a worker really died at step 25
    assert m["resumed_from_step"] == 20
    assert m["world_size"] == 2 and m["workers"] == 2
    assert m["steps"] == 30
    assert m["eval_loss_after"] < 0.95 * m["eval_loss_before"], m
    assert m["tokens_per_s"] > 0 and m["tokens"] > 0
    assert m["heldout_source"] == "file"
    # Metrics went through ray.train.report: every logging step plus the final report.
    assert m["log_reports"] >= 3
    assert result.reported["finished"] == 1.0
    assert result.reported["eval_loss_after"] == pytest.approx(m["eval_loss_after"])
    # Only the adapter files came out of the checkpoint, under <home>/runs/<run>.
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == sorted(ADAPTER_FILES)
    assert result.adapter_dir.is_relative_to(tiny_cfg.paths.runs)
    # rank 0 wrote every log line (held-out loss before training and at every checkpoint;
    # the lines after step 20 once only, though the resumed run logged them again), and
    # the driver drew the loss curve
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "eval_loss" in r] == [0, 10, 20, 30]
    train_steps = [r["step"] for r in lines if "loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 30
    assert (result.run_dir / "loss_curve.png").stat().st_size > 1000
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_train_and_register_adalora_signed_with_centroid(ray_local, train_cfg):
    """AdaLoRA end to end, its Ray Train run storing checkpoints on S3 (train.storage_uri,
    as a cluster whose workers sit on several nodes does)."""
    from qlp_ray.registry.s3 import make_client
    from tests.helpers.moto_s3 import moto_s3

    tiny_cfg = train_cfg
    data = sample_path("ml", "train")
    adapter_id = f"ml-it-{uuid.uuid4().hex[:8]}"  # fresh id: QLP_TEST_HOME may be reused
    with moto_s3("qlp-runs") as s3:
        tiny_cfg.s3 = s3
        tiny_cfg.train.storage_uri = "s3://qlp-runs/train"
        record = train_and_register(
            tiny_cfg,
            domain="ml",
            data_path=data,
            adapter_id=adapter_id,
            method="adalora",
            workers=1,
            steps=20,
        )
        keys = [o["Key"] for o in make_client(s3).list_objects_v2(Bucket="qlp-runs")["Contents"]]
    run = record.metadata["run"]["run_name"]
    assert any(
        k.startswith(f"train/{run}/") and k.endswith("adapter_model.safetensors") for k in keys
    )
    assert (record.adapter_id, record.domain, record.version) == (adapter_id, "ml", 1)
    assert record.signed
    _assert_mlflow_run(tiny_cfg, record)
    verified = Registry(tiny_cfg).verify(adapter_id)
    assert verified.signed and verified.path == record.path

    info = json.loads((record.path / "qlp.json").read_text())
    assert info["method"] == "adalora"
    assert info["data_hash"] == file_sha256(data)
    metrics = info["metrics"]
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["steps"] == 20 and metrics["tokens_per_s"] > 0
    assert info["train_config"]["method"] == "adalora" and info["train_config"]["steps"] == 20
    ranks = info["rank_pattern"]
    assert len(ranks) == 16 and len(set(ranks.values())) > 1
    assert "model.layers.0.self_attn.q_proj" in ranks
    assert info["run"]["heldout_records"] >= 1  # split off: no held-out file was given

    centroid = np.asarray(info["centroid"], dtype=np.float32)
    assert centroid.shape == (384,)
    assert np.linalg.norm(centroid) == pytest.approx(1.0, abs=1e-4)
    # The centroid is closer to this domain's held-out prompts than to another domain's.
    embedder = get_embedder(tiny_cfg.router.embedding_model)
    own = embedder.encode([routing_text(c) for c in load_capsules(sample_path("ml", "heldout"))])
    other = embedder.encode(
        [routing_text(c) for c in load_capsules(sample_path("frontend", "heldout"))]
    )
    assert float((own @ centroid).mean()) > float((other @ centroid).mean()) + 0.1


def _assert_mlflow_run(cfg, record) -> None:
    """The run, read back from the MLflow store under <home>: the training config as params,
    per-step loss / held-out loss / learning-rate series, the registered adapter as tags."""
    from mlflow import MlflowClient

    assert cfg.tracking.enabled and not cfg.tracking.mlflow_uri  # the default store
    client = MlflowClient(tracking_uri=f"sqlite:///{cfg.paths.root / 'mlflow.db'}")
    run = client.get_run(record.metadata["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == record.metadata["run"]["run_name"]
    params = run.data.params
    assert (params["train.method"], params["train.steps"], params["domain"]) == (
        "adalora", "20", "ml")  # fmt: skip
    assert params["train.lr_scheduler"] == "linear" and params["train.grad_accum"] == "1"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) >= 5 and [p.step for p in losses] == sorted(p.step for p in losses)
    assert all(p.value > 0 for p in losses)
    lrs = client.get_metric_history(run.info.run_id, "learning_rate")
    assert len(lrs) >= 5 and lrs[-1].value < lrs[0].value  # linear decay
    evals = {p.step: p.value for p in client.get_metric_history(run.info.run_id, "eval_loss")}
    assert {0, 20} <= set(evals) and evals[20] < evals[0]
    after = record.metadata["metrics"]["eval_loss_after"]
    assert run.data.metrics["eval_loss_after"] == pytest.approx(after)
    tags = run.data.tags
    assert (tags["qlp.adapter_id"], tags["qlp.adapter_version"]) == (record.adapter_id, "1")
    assert tags["qlp.adapter_signed"] == "True" and tags["qlp.domain"] == "ml"
