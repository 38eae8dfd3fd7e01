"""Router evaluation: grouped folds never leak a repository, metrics by hand, cache, lexical."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.route.evaluation import (
    EmbeddingCache,
    classification_metrics,
    evaluate_modes,
    load_routing_data,
)
from qlp_ray.route.folds import group_kfold
from qlp_ray.route.learned import softmax
from qlp_ray.route.lexical import char_ngrams, train_lexical


def test_group_kfold_keeps_each_repository_on_one_side():
    groups = [f"org/repo{i % 13}" for i in range(100)] + ["big/repo"] * 20
    splits = group_kfold(groups, 5, seed=3)
    seen_test = []
    for train, test in splits:
        assert not {groups[i] for i in train} & {groups[i] for i in test}
        seen_test += test.tolist()
    assert sorted(seen_test) == list(range(len(groups)))  # every row tested exactly once
    sizes = [len(t) for _, t in splits]
    assert max(sizes) - min(sizes) <= 20  # balanced up to the largest group
    with pytest.raises(InvalidRequest, match="--folds"):
        group_kfold(["a", "b"], 3)


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    conf = np.array([0.9, 0.3, 0.8, 0.6, 0.7, 0.2])
    m = classification_metrics(y, pred, conf, threshold=0.5, n_classes=3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1: class0 tp1 fp1 fn1 -> .5; class1 tp2 fp1 fn0 -> .8; class2 tp1 fp0 fn1 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["coverage"] == pytest.approx(4 / 6)
    assert m["accuracy_above_threshold"] == pytest.approx(1.0)


def test_load_routing_data_groups_by_repository_and_names_bad_lines(tmp_path):
    good = tmp_path / "d.jsonl"
    good.write_text(
        json.dumps({"text": "Helm chart fails", "domain": "devops", "source": "helm/helm#1"})
        + "\n\n"
        + json.dumps({"instruction": "Fix a React hook", "domain": "frontend"})
        + "\n"
    )
    rows = load_routing_data(good)
    assert [r.group for r in rows] == ["helm/helm", "row3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "domain": "api"}\n{oops\n')
    with pytest.raises(InvalidRequest, match=r"bad.jsonl:2"):
        load_routing_data(bad)
    with pytest.raises(InvalidRequest, match="not found"):
        load_routing_data(tmp_path / "missing.jsonl")


def test_embedding_cache_encodes_each_text_once(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    cache = EmbeddingCache(encode, "m", tmp_path)
    a = cache.encode(["ab", "abc", "ab"])
    assert a.shape == (3, 2) and a[0, 0] == 2 and a[1, 0] == 3
    again = EmbeddingCache(encode, "m", tmp_path)  # a new process reads the file
    np.testing.assert_array_equal(again.encode(["abc", "ab"]), a[[1, 0]])
    assert len(calls) == 1 and sorted(calls[0]) == ["ab", "abc"]


def test_lexical_model_learns_tool_names():
    assert char_ngrams("Vue") == [" vu", "vue", "ue ", " vue", "vue ", " vue "]
    texts = [
        "helm chart upgrade",
        "kubectl apply fails",
        "react hook state",
        "vue component",
        "helm values",
        "kubectl logs pod",
        "react render",
        "vue router",
    ]
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    model = train_lexical(texts, y, 2, n_buckets=1 << 12)
    probs = softmax(model.logits(["helm release broke", "vue props typing"]))
    assert probs[0, 0] > 0.6 and probs[1, 1] > 0.6


@pytest.mark.parametrize("head", ["knn", "gating"])
def test_evaluate_modes_on_toy_embeddings(head):
    """Both modes (either learned head) run end to end on a separable toy set."""
    rng = np.random.default_rng(0)
    words = {"api": "endpoint", "ml": "tensor", "devops": "helm"}
    rows, vecs = [], {}
    for d, w in words.items():
        centre = rng.normal(size=16)
        for i in range(12):
            text = f"{w} issue {i}"
            rows.append((text, d, f"org/repo{i % 6}"))
            vecs[text] = centre + 0.3 * rng.normal(size=16)
    from qlp_ray.route.evaluation import LearnedOptions, RoutingExample

    examples = [RoutingExample(t, d, g) for t, d, g in rows]

    def encode(texts):
        out = np.stack([vecs.get(t, rng.normal(size=16)) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    opts = LearnedOptions(
        use_priors=False,
        use_samples=False,
        calib_folds=2,
        lexical_buckets=1 << 12,
        finetune=False,
        head=head,
    )
    results = evaluate_modes(examples, encode, folds=3, centroid_threshold=0.5, opts=opts)
    assert [r["mode"] for r in results] == ["centroid", "learned"]
    for r in results:
        assert r["n"] == 36 and r["accuracy"] >= 0.9 and 0 <= r["coverage"] <= 1


def test_domain_priors_name_concepts_not_products():
    """The priors are generic domain knowledge: none of the tools/projects that an earlier,
    data-fitted version named (all of them repositories of the shared routing set)."""
    from qlp_ray.route.domain_priors import DOMAIN_PRIORS, prior_examples

    fitted = (
        "argo", "vite", "next.js", "redux", "vue", "helm", "ansible", "terraform", "kubernetes",
        "spark", "kafka", "airflow", "dbt", "hive", "trino", "fastapi", "flask", "nestjs",
        "express", "graphql", "pytorch", "deepspeed", "vllm", "sentence transformers",
        "jenkins", "docker", "grafana", "prometheus", "eks",
    )  # fmt: skip
    text = " ".join(p.lower() for phrases in DOMAIN_PRIORS.values() for p in phrases)
    assert [w for w in fitted if w in text.split() or f"{w} " in text] == []
    texts, labels = prior_examples(["ml", "api"])
    assert set(labels) == {"ml", "api"} and len(texts) == len(labels) >= 10


def test_title_like_keeps_the_first_sentence_without_lead_in():
    from qlp_ray.route.augment import title_like

    assert (
        title_like("How do I make the nightly export incremental? It rebuilds 2 TB.")
        == "Make the nightly export incremental"
    )
    assert title_like("Add retries to the upload step.") == "Add retries to the upload step"
    assert title_like("please fix the flaky test") == "Fix the flaky test"
    assert title_like("?") == "?"


def test_fold_featurizer_weighs_rows_by_repository():
    """Fine-tune weights: labelled rows get ``row_weight``, auxiliary texts ``aux_weight``."""
    from qlp_ray.route.finetune import TuneConfig, fold_featurizer

    class RecordingTuner:
        def fit(self, texts, y, n_classes, w, cfg):
            self.texts, self.w = list(texts), np.asarray(w)

        def encode(self, texts):
            return np.zeros((len(texts), 4), dtype=np.float32)

    tuner = RecordingTuner()
    texts, domains = ["a", "b", "c"], ["api", "api", "ml"]
    aux = (["p1", "s1", "s2"], ["api", "ml", "ml"], [True, False, False])
    featurize = fold_featurizer(
        tuner, texts, domains, aux, TuneConfig(), samples_per_domain=1, aux_weight=0.25,
        row_weight=[0.5, 0.7, 1.0],
    )  # fmt: skip
    x, ax = featurize(np.array([0, 2]))
    assert x.shape == (3, 4) and ax.shape == (3, 4)
    assert tuner.texts[:2] == ["a", "c"] and len(tuner.texts) == 4  # 1 prior + 1 sample of ml
    np.testing.assert_allclose(tuner.w, [0.5, 1.0, 0.25, 0.25])
