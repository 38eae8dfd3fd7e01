"""Top-layer fine-tuning of the MiniLM embedder: exact before tuning, separates domains after,
round-trips through the router directory into the serving embedder."""

from __future__ import annotations

import numpy as np
import pytest

from qlp_ray.route.embeddings import Embedder, packaged_model_dir

TEXTS = {
    0: ["helm upgrade fails", "pod stuck pending", "terraform state lock", "ci runner offline"],
    1: ["react hook loops", "css flex overflow", "vue prop not reactive", "button focus ring"],
}


def _separation(x: np.ndarray, y: np.ndarray) -> float:
    """Mean within-class cosine minus mean between-class cosine."""
    sims = x @ x.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(sims[same & off].mean() - sims[~same].mean())


@pytest.mark.slow
def test_tuner_is_exact_then_separates_and_ships_with_the_router(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from qlp_ray.route.finetune import TopLayerTuner, TuneConfig
    from qlp_ray.route.learned import GatingNetwork, LearnedRouter, LearnedRouterMeta

    texts = [t for c in TEXTS for t in TEXTS[c]]
    y = np.array([c for c in TEXTS for _ in TEXTS[c]])
    tuner = TopLayerTuner(packaged_model_dir(), n_layers=1)
    before = tuner.encode(texts)
    # untuned, the cached-lower-layers path is the packaged model's own embedding
    reference = tuner.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(before - reference).max() < 1e-5

    tuner.fit(texts, y, 2, cfg=TuneConfig(epochs=6, learning_rate=5e-4, batch_size=4))
    after = tuner.encode(texts)
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert _separation(after, y) > _separation(before, y) + 0.05

    meta = LearnedRouterMeta(["devops", "frontend"], 0.0, 1.0, 384, [8, 8], 0.0, "x")
    router = LearnedRouter(GatingNetwork(384, 2, (8, 8), 0.0), meta)
    router.tuned_embedder = tuner
    router.save(tmp_path / "r")
    tuned_dir = LearnedRouter.embedder_dir(tmp_path / "r")
    assert tuned_dir == tmp_path / "r" / "embedder"
    assert not list(tuned_dir.rglob("*.bin")) and list(tuned_dir.rglob("*.safetensors"))
    served = Embedder(str(tuned_dir)).encode(texts)  # the Serve router's torch encoder
    assert np.abs(served - after).max() < 1e-4
    from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

    ir = OpenVINOEmbedder(str(tuned_dir), tmp_path / "ir", precision="f32").encode(texts)
    assert np.abs(ir - after).max() < 1e-4
    served_ov = OpenVINOEmbedder(str(tuned_dir), tmp_path / "ir").encode(texts)  # the default
    assert (served_ov * after).sum(axis=1).min() >= 0.9999  # auto: bf16 where the CPU has it

    tuner.reset()
    assert np.abs(tuner.encode(texts) - before).max() < 1e-6
    router.tuned_embedder = None  # re-saving without one removes the stale embedder
    router.save(tmp_path / "r")
    assert LearnedRouter.embedder_dir(tmp_path / "r") is None
