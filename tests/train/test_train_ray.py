"""Ray Train end to end on a real local Ray: SFT lowers held-out loss; train → sign → register.

Two Ray Train runs in total (each ~20–40 s on 2 cores): a 2-worker DDP LoRA run and a
1-worker AdaLoRA run through ``train_and_register``.
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
    tiny_cfg = train_cfg
    result = train_adapter(
        tiny_cfg,
        domain="dataeng",
        data_path=sample_path("dataeng", "train"),
        heldout_path=sample_path("dataeng", "heldout"),
        method="lora",
        workers=2,
        steps=30,
    )
    m = result.metrics
    assert m["world_size"] == 2 and m["workers"] == 2
    assert m["steps"] == 30
    assert m["eval_loss_after"] < 0.95 * m["eval_loss_before"], m
    assert m["tokens_per_s"] > 0 and m["tokens"] > 0
    assert m["heldout_source"] == "file"
    # Metrics went through ray.train.report: every logging step plus the final report.
    assert m["log_reports"] >= 3
    assert result.reported["done"] == 1.0
    assert result.reported["eval_loss_after"] == pytest.approx(m["eval_loss_after"])
    # Only the adapter files came out of the checkpoint, under <home>/runs/<run>.
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == sorted(ADAPTER_FILES)
    assert result.adapter_dir.is_relative_to(tiny_cfg.paths.runs)
    # rank 0 wrote every log line (held-out loss once before and once after training), and
    # the driver drew the loss curve
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [r["step"] for r in map(json.loads, lines) if "eval_loss" in r] == [0, 30]
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
