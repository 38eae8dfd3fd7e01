"""Learned routing: a gating network over sentence embeddings, with calibrated confidence.

The network is the seed's shape, ``dim -> 256 -> 128 -> n_domains`` with ReLU and dropout,
trained with PyTorch (full-batch AdamW, class-balanced weights) on unit embeddings. Its softmax
is calibrated by temperature scaling fitted on held-out folds, and the confidence threshold is
the lowest one whose held-out accuracy above it reaches a target, so "confidence 0.8" means
what it says and the fallback gets the requests the router would likely get wrong.

Persistence is ``gating.safetensors`` (weights only) plus ``router.json`` (labels, threshold,
temperature, shapes, provenance) — never pickle. No Ray import.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qlp_ray.core.errors import ConfigError, InvalidRequest
from qlp_ray.route.centroid import RouteDecision
from qlp_ray.route.folds import calibration_folds, group_kfold
from qlp_ray.route.knn import KnnHead
from qlp_ray.route.lexical import LexicalClassifier, train_lexical

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "gating.safetensors"
SIDECAR_FILE = "router.json"
EMBEDDER_DIR = "embedder"  # a fine-tuned sentence embedder saved with the router, if any

Featurize = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
FORMAT_VERSION = 1


class GatingNetwork(nn.Module):
    """``dim -> hidden[0] -> hidden[1] -> n_classes`` MLP with ReLU and dropout."""

    def __init__(
        self, dim: int, n_classes: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout / 2)]
        prev = dim
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU(), nn.Dropout(dropout)]
            prev = width
        layers.append(nn.Linear(prev, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class GatingTrainConfig:
    """Hyper-parameters of one gating-network fit."""

    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.5
    epochs: int = 100
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0


def train_gating(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    sample_weight: np.ndarray | None = None,
    cfg: GatingTrainConfig | None = None,
) -> GatingNetwork:
    """Fit a :class:`GatingNetwork` on ``(n, dim)`` embeddings and integer labels.

    Full-batch AdamW on weighted cross-entropy; each class's total weight is equalised so a
    domain with more examples does not dominate.
    """
    cfg = cfg or GatingTrainConfig()
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as embeddings (>0), got {len(x)} and {len(y)}")
    w = np.ones(len(y), dtype=np.float64) if sample_weight is None else sample_weight.astype(float)
    per_class = np.bincount(y, weights=w, minlength=n_classes)
    w = w / per_class[y] * (w.sum() / max(int((per_class > 0).sum()), 1))
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = GatingNetwork(x.shape[1], n_classes, cfg.hidden, cfg.dropout)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    wt = torch.as_tensor(w / w.sum(), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    net.train()
    for _ in range(cfg.epochs):
        opt.zero_grad()
        noise = 0.02 * torch.randn(xt.shape, generator=gen)
        loss = (nn.functional.cross_entropy(net(xt + noise), yt, reduction="none") * wt).sum()
        loss.backward()
        opt.step()
    net.eval()
    return net


def logits_of(net: GatingNetwork, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Golden-section search on ``log T`` in [log 0.05, log 20] (the NLL is unimodal in T).
    """

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_accuracy: float, min_support: int = 10
) -> float:
    """Lowest confidence threshold whose accuracy on the examples at or above it reaches
    ``target_accuracy`` (with at least ``min_support`` of them); 0.0 if all of them do,
    and the top confidence if none does."""
    order = np.argsort(-confidence)
    conf, ok = confidence[order], correct[order].astype(float)
    acc_above = np.cumsum(ok) / np.arange(1, len(ok) + 1)
    best = None
    for i in range(len(conf)):
        if i + 1 >= min_support and acc_above[i] >= target_accuracy:
            best = i
    if best is None:
        return float(conf[0]) if len(conf) else 1.0
    if best == len(conf) - 1:
        return 0.0
    return float(conf[best])


@dataclass
class LearnedRouterMeta:
    """What ``router.json`` holds besides the weights."""

    labels: list[str]
    threshold: float
    temperature: float
    dim: int
    hidden: list[int]
    dropout: float
    embedding_model: str
    lexical_buckets: int | None = None
    # "gating": the MLP scores embeddings; "knn": the k nearest labelled rows do (no MLP)
    head: str = "gating"
    knn_k: int = 10
    knn_sharpness: float = 8.0
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


class LearnedRouter:
    """Embedding head (gating network or kNN) + optional lexical model + temperature + threshold.

    With a lexical model the score of a domain is the sum of both models' log-probabilities
    (a product of experts), divided by the fitted temperature before the softmax.
    """

    def __init__(
        self,
        net: GatingNetwork | None,
        meta: LearnedRouterMeta,
        lexical: LexicalClassifier | None = None,
        knn: KnnHead | None = None,
    ) -> None:
        if (net is None) == (knn is None):
            raise ValueError(
                "a learned router needs exactly one of a gating network and a kNN head"
            )
        self.net = net.eval() if net is not None else None
        self.knn = knn
        self.lexical = lexical.eval() if lexical is not None else None
        self.meta = meta
        self.labels = list(meta.labels)
        # a fine-tuned embedder (anything with ``save(dir)``) this router's weights expect
        self.tuned_embedder: Any = None

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    def raw_scores(self, embeddings: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """Uncalibrated ``(n, n_domains)`` log-scores."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.meta.dim:
            raise ValueError(f"expected (n, {self.meta.dim}) embeddings, got shape {x.shape}")
        z = self.knn.log_probs(x) if self.knn is not None else log_softmax(logits_of(self.net, x))
        if self.lexical is not None:
            if texts is None or len(texts) != len(x):
                raise InvalidRequest("this router has a lexical model: pass the texts too")
            z = z + log_softmax(self.lexical.logits(texts))
        return z

    def probabilities(
        self, embeddings: np.ndarray, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Calibrated ``(n, n_domains)`` class probabilities."""
        return softmax(self.raw_scores(embeddings, texts) / self.meta.temperature)

    def route_batch(
        self,
        embeddings: np.ndarray,
        texts: Sequence[str] | None = None,
        targets: Mapping[str, str] | None = None,
        threshold: float | None = None,
    ) -> list[RouteDecision]:
        """Route a batch. ``targets`` maps domain -> adapter id (default: the domain name);
        a domain without a target, or a confidence below the threshold, goes to the fallback."""
        thr = self.meta.threshold if threshold is None else threshold
        probs = self.probabilities(embeddings, texts)
        out = []
        for row in probs:
            best = int(row.argmax())
            domain, conf = self.labels[best], float(row[best])
            scores = {d: float(p) for d, p in zip(self.labels, row, strict=True)}
            target = domain if targets is None else targets.get(domain)
            if conf < thr or target is None:
                out.append(RouteDecision(None, None, conf, True, scores))
            else:
                out.append(RouteDecision(target, domain, conf, False, scores))
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``gating.safetensors``, ``router.json`` and any tuned embedder into ``d``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {}
        if self.net is not None:
            state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        if self.knn is not None:
            state.update(self.knn.state_tensors())
        if self.lexical is not None:
            state.update(self.lexical.state_tensors())
        save_file(state, str(d / WEIGHTS_FILE), metadata={"format": "qlp-gating"})
        if self.tuned_embedder is not None:
            self.tuned_embedder.save(d / EMBEDDER_DIR)
            self.meta.embedding_model = EMBEDDER_DIR
        elif (d / EMBEDDER_DIR).is_dir():  # a stale one from an earlier save would mislead
            shutil.rmtree(d / EMBEDDER_DIR)
        (d / SIDECAR_FILE).write_text(json.dumps(asdict(self.meta), indent=2) + "\n")
        logger.info("saved learned router (%d domains) to %s", len(self.labels), d)
        return d

    @staticmethod
    def embedder_dir(directory: str | Path) -> Path | None:
        """The fine-tuned embedder saved with the router in ``directory``, if there is one.

        A router trained on a fine-tuned embedder only makes sense with that embedder: whoever
        serves it must encode requests with this model instead of the configured one."""
        d = Path(directory) / EMBEDDER_DIR
        return d if (d / "config.json").is_file() else None

    @classmethod
    def load(cls, directory: str | Path) -> LearnedRouter:
        """Load a router written by :meth:`save` (safetensors + JSON only)."""
        d = Path(directory)
        sidecar, weights = d / SIDECAR_FILE, d / WEIGHTS_FILE
        if not sidecar.is_file() or not weights.is_file():
            raise ConfigError(
                f"no learned router in {d}: need {SIDECAR_FILE} and {WEIGHTS_FILE} "
                "(train one with `qlp router train --data PATH`)"
            )
        try:
            raw = json.loads(sidecar.read_text())
            meta = LearnedRouterMeta(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"corrupt {sidecar}: {exc}") from exc
        if meta.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"{sidecar} has format {meta.format_version}, this version reads {FORMAT_VERSION}"
            )
        tensors = load_file(str(weights))
        lexical = net = knn = None
        try:
            if meta.lexical_buckets:
                lexical = LexicalClassifier(len(meta.labels), meta.lexical_buckets)
                lexical.load_tensors(
                    {k: tensors.pop(k) for k in list(tensors) if k.startswith("lexical.")}
                )
            if meta.head == "knn":
                knn = KnnHead.from_tensors(
                    tensors, len(meta.labels), meta.knn_k, meta.knn_sharpness
                )
            else:
                net = GatingNetwork(meta.dim, len(meta.labels), meta.hidden, meta.dropout)
                net.load_state_dict(tensors)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ConfigError(f"{weights} does not match {sidecar}: {exc}") from exc
        return cls(net, meta, lexical, knn)


def fit_learned_router(
    x: np.ndarray,
    domains: Sequence[str],
    groups: Sequence[str],
    *,
    texts: Sequence[str] | None = None,
    extra_x: np.ndarray | None = None,
    extra_texts: Sequence[str] = (),
    extra_domains: Sequence[str] = (),
    extra_weight: float | np.ndarray = 1.0,
    cfg: GatingTrainConfig | None = None,
    lexical_buckets: int | None = 1 << 18,
    target_accuracy: float = 0.9,
    calib_folds: int = 3,
    embedding_model: str = "",
    featurize: Featurize | None = None,
    head: str = "gating",
) -> LearnedRouter:
    """Train a calibrated :class:`LearnedRouter`.

    ``x``/``domains``/``groups`` (and ``texts`` for the lexical model) are the labelled rows,
    grouped e.g. by repository; ``extra_*`` are auxiliary examples (domain priors, synthetic
    samples) that always stay on the training side. Temperature and threshold come from
    out-of-fold scores of ``calib_folds`` grouped folds; the final models see everything.
    ``lexical_buckets=None`` (or no ``texts``) trains the gating network alone.

    ``featurize(train_rows)``, when given, fits the embedder on those rows and returns fresh
    ``(x, extra_x)`` for all rows; it is called once per calibration fold (so held-out scores
    come from an embedder that never saw the held-out rows) and last for the final fit, which
    leaves the embedder in its final state.

    ``head="knn"`` scores embeddings by their nearest labelled rows (auxiliary examples then
    reach the router only through the embedder and the lexical model) instead of the MLP.
    """

    cfg = cfg or GatingTrainConfig()
    labels = sorted(set(domains) | set(extra_domains))
    index = {d: i for i, d in enumerate(labels)}
    y = np.array([index[d] for d in domains])
    ex = np.zeros((0, x.shape[1]), dtype=np.float32) if extra_x is None else extra_x
    ey = np.array([index[d] for d in extra_domains], dtype=int)
    if len(ex) != len(ey):
        raise ValueError(f"{len(ex)} extra embeddings but {len(ey)} extra domains")
    use_lexical = bool(lexical_buckets) and texts is not None
    if use_lexical and len(extra_texts) != len(ey):
        raise ValueError(f"{len(extra_texts)} extra texts but {len(ey)} extra domains")
    extra_w = np.broadcast_to(np.asarray(extra_weight, dtype=float), (len(ey),))

    def features(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if featurize is None:
            return x, ex
        fx, fex = featurize(rows)
        return fx, (ex if fex is None else fex)

    def fit(rows: np.ndarray, fx: np.ndarray, fex: np.ndarray) -> LearnedRouter:
        yt = np.concatenate([y[rows], ey])
        w = np.concatenate([np.ones(len(rows)), extra_w])
        net = knn = None
        if head == "knn":
            knn = KnnHead(fx[rows], y[rows], len(labels))
        else:
            net = train_gating(np.concatenate([fx[rows], fex]), yt, len(labels), w, cfg)
        lexical = None
        if use_lexical:
            lex_texts = [texts[i] for i in rows] + list(extra_texts)
            lexical = train_lexical(lex_texts, yt, len(labels), w, n_buckets=lexical_buckets)
        meta = LearnedRouterMeta(
            labels=labels,
            threshold=0.0,
            temperature=1.0,
            dim=int(fx.shape[1]),
            hidden=list(cfg.hidden),
            dropout=cfg.dropout,
            embedding_model=embedding_model,
            lexical_buckets=lexical_buckets if use_lexical else None,
            head=head,
        )
        return LearnedRouter(net, meta, lexical, knn)

    if head not in ("gating", "knn"):
        raise ValueError(f"head must be 'gating' or 'knn', got {head!r}")
    temperature, threshold = 1.0, 0.0
    n_calib = calibration_folds(groups, calib_folds)
    if n_calib:
        held = np.zeros((len(y), len(labels)))
        for train_idx, test_idx in group_kfold(groups, n_calib, cfg.seed):
            sub_texts = [texts[i] for i in test_idx] if use_lexical else None
            fx, fex = features(train_idx)
            held[test_idx] = fit(train_idx, fx, fex).raw_scores(fx[test_idx], sub_texts)
        temperature = fit_temperature(held, y)
        probs = softmax(held / temperature)
        conf, pred = probs.max(axis=1), probs.argmax(axis=1)
        threshold = choose_threshold(conf, pred == y, target_accuracy)
        logger.info(
            "calibration: held-out accuracy %.3f, temperature %.2f, threshold %.3f",
            float((pred == y).mean()),
            temperature,
            threshold,
        )
    every = np.arange(len(y))
    router = fit(every, *features(every))
    router.meta.temperature = temperature
    router.meta.threshold = threshold
    router.meta.extra = {
        "n_labelled": int(len(y)),
        "n_extra": int(len(ey)),
        "target_accuracy": target_accuracy,
        "calib_folds": calib_folds,
        "train": asdict(cfg),
        "fine_tuned_embedder": featurize is not None,
    }
    return router


def targets_by_domain(entries: Iterable[tuple[str, str, int]]) -> dict[str, str]:
    """Map each domain to the adapter that serves it: ``(adapter_id, domain, version)`` rows,
    the highest version winning (ties: the first listed)."""
    best: dict[str, tuple[int, str]] = {}
    for adapter_id, domain, version in entries:
        if domain not in best or version > best[domain][0]:
            best[domain] = (version, adapter_id)
    return {d: a for d, (_, a) in best.items()}
