"""Supervised fine-tuning of the sentence embedder's top transformer layers for routing.

The frozen MiniLM blurs the signals that decide a domain; fine-tuning its last ``n_layers``
transformer layers on labelled routing rows (plus priors and bundled samples) pulls each
domain's titles together. The lower layers stay frozen, so their output for each text is
computed once and cached: fitting the top layer on a few hundred short texts then takes
seconds on a CPU, which makes it affordable inside every cross-validation fold. The
objective is a cosine classifier with learnable class prototypes (normalised softmax, scale
``scale``) on the mean-pooled, L2-normalised sentence embedding — the same embedding the
router serves with. The result is a full model of the same size and speed, saved with
sentence-transformers' own ``save`` (safetensors). No Ray import.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    """Hyper-parameters of one top-layer fine-tune."""

    n_layers: int = 1
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    scale: float = 16.0
    seed: int = 0
    # "prototype": cosine classifier with learnable class prototypes (epochs, batch_size, scale);
    # "supcon": supervised contrastive loss (SetFit-like: same-domain texts of a batch are
    # positives, the other domains' negatives) on ``steps`` class-balanced batches of
    # ``per_class_rows`` labelled rows (drawn with probability ~ their weight) and
    # ``per_class_aux`` auxiliary texts per domain; linear warm-up (10 %) and decay.
    objective: str = "prototype"
    steps: int = 120
    per_class_rows: int = 4
    per_class_aux: int = 4
    temperature: float = 0.1


class TopLayerTuner:
    """Fine-tunes the top ``n_layers`` of a BERT-style SentenceTransformer on cached inputs."""

    def __init__(self, model_dir: str | Path, n_layers: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # progress of long fits: on_step(step, steps) after every optimiser step of a fit
        self.on_step: Callable[[int, int], None] | None = None
        self.fits = 0  # fits started (calibration folds re-tune, so one router takes several)
        from sentence_transformers import SentenceTransformer

        self.model_dir = Path(model_dir)
        self.st = SentenceTransformer(str(self.model_dir), device="cpu")
        self.st.eval()
        self.bert = self.st[0].auto_model
        pooling = self.st[1]
        if getattr(pooling, "pooling_mode", "mean") not in ("mean", "mean_tokens") and not getattr(
            pooling, "pooling_mode_mean_tokens", False
        ):
            raise ValueError(f"{self.model_dir}: only mean pooling is supported")
        layers = self.bert.encoder.layer
        if not 1 <= n_layers <= len(layers):  # all layers: the token embeddings stay frozen
            raise ValueError(f"n_layers must be in [1, {len(layers)}], got {n_layers}")
        self.n_layers = n_layers
        self.top = layers[len(layers) - n_layers :]
        self._initial = copy.deepcopy(self.top.state_dict())
        self._cache: dict[str, torch.Tensor] = {}

    def _lower_states(self, texts: Sequence[str]) -> None:
        """Cache the input of the first tuned layer for each new text (frozen layers)."""
        todo = sorted({t for t in texts if t not in self._cache})
        cut = len(self.bert.encoder.layer) - self.n_layers
        for start in range(0, len(todo), 64):
            batch = todo[start : start + 64]
            feats = self.st.preprocess(batch)
            with torch.no_grad():
                out = self.bert(**feats, output_hidden_states=True)
            states = out.hidden_states[cut]
            for i, text in enumerate(batch):
                n = int(feats["attention_mask"][i].sum())
                self._cache[text] = states[i, :n].clone()

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit sentence embeddings through the (possibly tuned) top layers."""
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
        return nn.functional.normalize(pooled, dim=-1)

    def reset(self) -> None:
        """Restore the top layers to the base model's weights."""
        self.top.load_state_dict(self._initial)

    def fit(
        self,
        texts: Sequence[str],
        y: np.ndarray,
        n_classes: int,
        sample_weight: np.ndarray | None = None,
        cfg: TuneConfig | None = None,
        is_aux: np.ndarray | None = None,
    ) -> TopLayerTuner:
        """Reset, then fine-tune the top layers on ``texts``/``y`` (class-balanced weights).

        ``is_aux`` marks auxiliary texts (priors, samples): the ``supcon`` objective draws
        them uniformly into their own share of each batch, and ignores their weights."""
        cfg = cfg or TuneConfig()
        if cfg.n_layers != self.n_layers:
            raise ValueError(f"this tuner tunes {self.n_layers} layer(s), cfg asks {cfg.n_layers}")
        if cfg.objective not in ("prototype", "supcon"):
            raise ValueError(f"objective must be 'prototype' or 'supcon', got {cfg.objective!r}")
        self.reset()
        self.fits += 1
        self._lower_states(texts)
        if cfg.objective == "supcon":
            return self._fit_supcon(texts, np.asarray(y), n_classes, sample_weight, cfg, is_aux)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        per_class = np.bincount(y, weights=w, minlength=n_classes)
        w = w / per_class[y] * (len(y) / n_classes)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        with torch.no_grad():  # prototypes start at the class means of the frozen embeddings
            base = self._embed(list(texts))
            protos = torch.stack([base[torch.as_tensor(y == c)].mean(0) for c in range(n_classes)])
        prototypes = nn.Parameter(nn.functional.normalize(protos, dim=-1))
        params = [p for p in self.top.parameters()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(
            [
                {"params": params, "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay},
                {"params": [prototypes], "lr": 1e-2, "weight_decay": 0.0},
            ]
        )
        yt = torch.as_tensor(y, dtype=torch.long)
        wt = torch.as_tensor(w, dtype=torch.float32)
        self.top.train()
        steps, step = cfg.epochs * -(-len(y) // cfg.batch_size), 0
        for _ in range(cfg.epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                emb = self._embed([texts[i] for i in idx])
                logits = cfg.scale * emb @ nn.functional.normalize(prototypes, dim=-1).T
                loss = nn.functional.cross_entropy(logits, yt[idx], reduction="none")
                loss = (loss * wt[idx]).sum() / wt[idx].sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                self._report(step, steps)
        self.top.eval()
        return self

    def _fit_supcon(
        self,
        texts: Sequence[str],
        y: np.ndarray,
        n_classes: int,
        sample_weight: np.ndarray | None,
        cfg: TuneConfig,
        is_aux: np.ndarray | None,
    ) -> TopLayerTuner:
        aux = np.zeros(len(y), bool) if is_aux is None else np.asarray(is_aux, dtype=bool)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        params = list(self.top.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warm = max(1.0, 0.1 * cfg.steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / cfg.steps)
        )
        pools = []
        for c in range(n_classes):
            rows = np.flatnonzero((y == c) & ~aux)
            pools.append((rows, cfg.per_class_rows, w[rows] / w[rows].sum() if len(rows) else None))
            pools.append((np.flatnonzero((y == c) & aux), cfg.per_class_aux, None))
        self.top.train()
        for step in range(cfg.steps):
            idx = []
            for pool, k, p in pools:
                if k and len(pool):
                    idx += rng.choice(pool, size=min(k, len(pool)), replace=False, p=p).tolist()
            loss = supcon_loss(
                self._embed([texts[i] for i in idx]), torch.as_tensor(y[idx]), cfg.temperature
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            self._report(step + 1, cfg.steps)
        self.top.eval()
        return self

    def _report(self, step: int, steps: int) -> None:
        if self.on_step is not None:
            self.on_step(step, steps)

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """``(n, dim)`` float32 unit embeddings with the current top layers."""
        texts = list(texts)
        self._lower_states(texts)
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                out.append(self._embed(texts[start : start + batch_size]).numpy())
        return np.concatenate(out).astype(np.float32)

    def save(self, directory: str | Path) -> Path:
        """Write the whole model (tuned top layers included) as a SentenceTransformer dir."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.st.save(str(d), safe_serialization=True)
        logger.info("saved fine-tuned embedder to %s", d)
        return d


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) of unit rows ``z``: each row
    pulls the batch's other rows of its class (mean log-likelihood among all other rows);
    rows without a positive in the batch are skipped."""
    eye = torch.eye(len(y), dtype=torch.bool)
    sim = (z @ z.T / temperature).masked_fill(eye, -1e9)
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(1)
    keep = n_pos > 0
    return (-(logp * pos).sum(1)[keep] / n_pos[keep]).mean()


def fold_featurizer(
    tuner: TopLayerTuner,
    texts: Sequence[str],
    domains: Sequence[str],
    aux: tuple[Sequence[str], Sequence[str], Sequence[bool]],
    cfg: TuneConfig,
    samples_per_domain: int = 30,
    aux_weight: float = 0.5,
    row_weight: Sequence[float] | None = None,
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """``featurize(rows)`` for :func:`~qlp_ray.route.learned.fit_learned_router`.

    It fine-tunes ``tuner`` on ``texts[rows]`` plus every auxiliary prior and
    ``samples_per_domain`` (seeded pick) of the other auxiliary texts (bundled samples) of
    each domain, weighted ``aux_weight``; then it embeds all ``texts`` and auxiliary texts.
    ``aux`` is ``(texts, domains, is_prior)``; ``row_weight`` weighs the labelled rows (1).
    With ``cfg.objective == "supcon"`` every auxiliary text joins the pool the contrastive
    batches draw from (``samples_per_domain`` and ``aux_weight`` do not apply).
    """
    aux_t, aux_d, is_prior = list(aux[0]), list(aux[1]), np.asarray(aux[2], dtype=bool)
    labels = sorted(set(domains) | set(aux_d))
    y = np.array([labels.index(d) for d in domains])
    aux_y = np.array([labels.index(d) for d in aux_d], dtype=int)
    rng = np.random.default_rng(cfg.seed)
    picked = [np.flatnonzero(is_prior)]
    for c in range(len(labels)):
        pool = np.flatnonzero(~is_prior & (aux_y == c))
        picked.append(rng.permutation(pool)[:samples_per_domain])
    ft_aux = np.concatenate(picked).astype(int)
    supcon = cfg.objective == "supcon"
    if supcon:
        ft_aux = np.arange(len(aux_t))
    rw = np.ones(len(texts)) if row_weight is None else np.asarray(row_weight, dtype=float)

    def featurize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        ft_texts = [texts[i] for i in rows] + [aux_t[i] for i in ft_aux]
        ft_y = np.concatenate([y[rows], aux_y[ft_aux]])
        ft_w = np.concatenate([rw[rows], np.full(len(ft_aux), aux_weight)])
        if supcon:
            is_aux = np.arange(len(ft_y)) >= len(rows)
            tuner.fit(ft_texts, ft_y, len(labels), ft_w, cfg, is_aux=is_aux)
        else:
            tuner.fit(ft_texts, ft_y, len(labels), ft_w, cfg)
        return tuner.encode(texts), (tuner.encode(aux_t) if aux_t else None)

    return featurize
