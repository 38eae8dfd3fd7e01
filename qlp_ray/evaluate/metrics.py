"""Evaluation metrics: language-model quality, task quality, and speed/memory.

Everything here is a plain function over plain data (or a torch model for
perplexity); no Ray. Text metrics use the reference libraries (``sacrebleu``,
``rouge-score``) so numbers match what other tools report.
"""

from __future__ import annotations

import logging
import math
import re
import resource
import string
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qlp_ray.core.errors import InvalidRequest

logger = logging.getLogger(__name__)

Average = Literal["macro", "micro"]


def _check_pairs(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise InvalidRequest(
            f"predictions ({len(predictions)}) and references ({len(references)}) differ in length"
        )
    if not predictions:
        raise InvalidRequest("no examples to evaluate")


# --- perplexity -------------------------------------------------------------------------
# The one perplexity of qlp_ray: every caller (evaluation runs, the optimisation report, the
# improve loop's held-out check, the OpenVINO backend's token NLL) ends in perplexity_from_nll.


def perplexity_from_nll(total_nll: float, n_tokens: int) -> float:
    """``exp(total negative log-likelihood / number of predicted tokens)``."""
    if n_tokens <= 0:
        raise InvalidRequest("perplexity needs at least one predicted token")
    return math.exp(total_nll / n_tokens)


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float
    n_tokens: int

    @classmethod
    def from_nll(cls, total_nll: float, n_tokens: int) -> PerplexityResult:
        """Pooled result of ``n_tokens`` predicted tokens whose NLLs sum to ``total_nll``."""
        ppl = perplexity_from_nll(total_nll, n_tokens)
        return cls(perplexity=ppl, mean_nll=total_nll / n_tokens, n_tokens=n_tokens)


def _sum_nll(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> tuple[float, int]:
    """Summed next-token NLL of the positions whose label is not -100, and their count."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(nll), int((target != -100).sum())


def _pooled(model: Any, batches: Iterator[tuple[Any, Any, Any]]) -> PerplexityResult:
    """Pool :func:`_sum_nll` over ``(input_ids, attention_mask, labels)`` batches (eval mode,
    no gradients; the model's training mode is restored afterwards)."""
    import torch

    was_training = model.training
    model.eval()
    total_nll, n_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for input_ids, attention_mask, labels in batches:
                nll, n = _sum_nll(model, input_ids, attention_mask, labels)
                total_nll += nll
                n_tokens += n
    finally:
        model.train(was_training)
    return PerplexityResult.from_nll(total_nll, n_tokens)


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 8,
) -> PerplexityResult:
    """Token-level perplexity of a causal LM on ``texts``.

    Each text is scored on its own (no packing): the model predicts tokens
    2..n from their prefixes; padding is masked out. The result pools the NLL
    of every predicted token across all texts.
    """
    if not texts:
        raise InvalidRequest("perplexity needs at least one text")
    if tokenizer.pad_token_id is None:
        raise InvalidRequest("tokenizer has no pad token; set tokenizer.pad_token first")
    device = next(model.parameters()).device

    def batches() -> Iterator[tuple[Any, Any, Any]]:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            real = batch["attention_mask"].bool()
            # a token is predicted only if it and its prefix are real (left or right padding)
            scored = real.clone()
            scored[:, 1:] &= real[:, :-1]
            labels = batch["input_ids"].masked_fill(~scored, -100)
            yield batch["input_ids"], batch["attention_mask"], labels

    return _pooled(model, batches())


def completion_perplexity(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[dict[str, str]],
    *,
    max_length: int = 256,
    batch_size: int = 8,
) -> PerplexityResult:
    """Perplexity of each ``completion`` (plus the tokenizer's EOS) given its ``prompt``.

    Prompt and completion are tokenized apart (no special tokens) and joined, as in
    training; prompt tokens and padding are masked out, sequences are cut at ``max_length``.
    Raises ``InvalidRequest`` when nothing is left to score.
    """
    import torch

    if not pairs:
        raise InvalidRequest("completion perplexity needs at least one prompt/completion pair")
    eos = tokenizer.eos_token or ""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device

    def batches() -> Iterator[tuple[Any, Any, Any]]:
        for start in range(0, len(pairs), batch_size):
            ids, labels = [], []
            for p in pairs[start : start + batch_size]:
                prompt = tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]
                completion = tokenizer(p["completion"] + eos, add_special_tokens=False)["input_ids"]
                ids.append((prompt + completion)[:max_length])
                labels.append(([-100] * len(prompt) + completion)[:max_length])
            width = max(len(s) for s in ids)
            yield (
                torch.tensor([s + [pad] * (width - len(s)) for s in ids], device=device),
                torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids], device=device),
                torch.tensor([s + [-100] * (width - len(s)) for s in labels], device=device),
            )

    try:
        return _pooled(model, batches())
    except InvalidRequest as exc:
        raise InvalidRequest("no completion tokens to score (all truncated away?)") from exc


# --- exact match, accuracy, classification P/R/F1 ---------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, strip punctuation, articles and extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(
    predictions: Sequence[str], references: Sequence[str], *, normalize: bool = True
) -> float:
    """Share of predictions equal to their reference (after normalisation by default)."""
    _check_pairs(predictions, references)
    norm = normalize_answer if normalize else (lambda s: s)
    return sum(norm(p) == norm(r) for p, r in zip(predictions, references, strict=True)) / len(
        predictions
    )


def accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Share of labels predicted exactly."""
    _check_pairs(predictions, references)
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(predictions)


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float


def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    return _safe_div(2 * p * r, p + r)


def precision_recall_f1(
    predictions: Sequence[Any],
    references: Sequence[Any],
    *,
    average: Average = "macro",
    labels: Sequence[Any] | None = None,
) -> PRF:
    """Classification precision/recall/F1 over ``labels`` (default: every label seen).

    ``macro`` averages per-label scores (F1 = mean of per-label F1s, as in
    scikit-learn); ``micro`` pools true/false positives over labels.
    """
    _check_pairs(predictions, references)
    if average not in ("macro", "micro"):
        raise InvalidRequest(f"average must be 'macro' or 'micro', got {average!r}")
    label_set = list(labels) if labels is not None else sorted(set(references) | set(predictions))
    tp, fp, fn = Counter(), Counter(), Counter()
    for p, r in zip(predictions, references, strict=True):
        if p == r:
            tp[p] += 1
        else:
            fp[p] += 1
            fn[r] += 1
    if average == "micro":
        stp = sum(tp[c] for c in label_set)
        precision = _safe_div(stp, stp + sum(fp[c] for c in label_set))
        recall = _safe_div(stp, stp + sum(fn[c] for c in label_set))
        return PRF(precision, recall, _f1(precision, recall))
    ps = [_safe_div(tp[c], tp[c] + fp[c]) for c in label_set]
    rs = [_safe_div(tp[c], tp[c] + fn[c]) for c in label_set]
    fs = [_f1(p, r) for p, r in zip(ps, rs, strict=True)]
    n = len(label_set)
    return PRF(sum(ps) / n, sum(rs) / n, sum(fs) / n)


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean SQuAD token-overlap F1 between each prediction and its reference."""
    _check_pairs(predictions, references)
    scores = []
    for pred, ref in zip(predictions, references, strict=True):
        p_toks, r_toks = normalize_answer(pred).split(), normalize_answer(ref).split()
        if not p_toks or not r_toks:
            scores.append(float(p_toks == r_toks))
            continue
        common = sum((Counter(p_toks) & Counter(r_toks)).values())
        precision, recall = common / len(p_toks), common / len(r_toks)
        scores.append(_f1(precision, recall))
    return sum(scores) / len(scores)


# --- generation overlap: BLEU, ROUGE ---------------------------------------------------


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0–100) from ``sacrebleu`` with its default 13a tokeniser."""
    import sacrebleu

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
) -> dict[str, float]:
    """Mean ROUGE F-measure per type (0–1) from ``rouge-score``."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=False)
    sums = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for t in types:
            sums[t] += scores[t].fmeasure
    return {t: sums[t] / len(predictions) for t in types}


# --- speed and memory --------------------------------------------------------------------


def latency_percentiles(
    seconds: Sequence[float], percentiles: Sequence[float] = (50, 95, 99)
) -> dict[str, float]:
    """Latency percentiles in milliseconds (linear interpolation between samples)."""
    if not seconds:
        raise InvalidRequest("no latency samples")
    ms = np.asarray(seconds, dtype=float) * 1000.0
    return {f"p{int(q)}_ms": float(np.percentile(ms, q)) for q in percentiles}


def tokens_per_second(n_tokens: int, seconds: float) -> float:
    """Throughput; a zero or negative duration is an error, not infinity."""
    if seconds <= 0:
        raise InvalidRequest(f"duration must be positive, got {seconds}")
    return n_tokens / seconds


@dataclass(frozen=True)
class MemoryResult:
    value: Any
    python_peak_bytes: int
    process_max_rss_bytes: int
    seconds: float


def measure_peak_memory(fn: Callable[[], Any]) -> MemoryResult:
    """Run ``fn`` and report its peak Python-heap allocation (tracemalloc) and
    the process's max resident set size so far (``getrusage``; includes native
    allocations such as torch tensors, but is a high-water mark of the process).
    """
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    try:
        value = fn()
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started_here:
            tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
    return MemoryResult(value, max(0, peak - base), rss_bytes, elapsed)


__all__ = [
    "PRF",
    "MemoryResult",
    "PerplexityResult",
    "accuracy",
    "bleu",
    "completion_perplexity",
    "exact_match",
    "latency_percentiles",
    "measure_peak_memory",
    "normalize_answer",
    "perplexity",
    "perplexity_from_nll",
    "precision_recall_f1",
    "rouge",
    "token_f1",
    "tokens_per_second",
]
