"""Optimise a model and measure size, speed and quality against the original in one run."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.evaluate.metrics import latency_percentiles, perplexity
from qlp_ray.optimize.prune import pruned_copy, sparse_bytes, weight_sparsity
from qlp_ray.optimize.quantize import quantize_dynamic_int8, quantize_static_int8

logger = logging.getLogger(__name__)

Method = Literal["dynamic-int8", "static-int8", "magnitude", "structured"]
METHODS: tuple[str, ...] = ("dynamic-int8", "static-int8", "magnitude", "structured")


@dataclass(frozen=True)
class Measurement:
    size_bytes: int  # serialized state dict
    sparse_bytes: int  # prunable weights as CSR, the rest dense (== size for quantized)
    sparsity: float
    perplexity: float
    p50_ms: float  # forward pass of one eval text
    tokens_per_s: float


@dataclass(frozen=True)
class OptimizationReport:
    method: str
    sparsity_target: float | None
    original: Measurement
    optimized: Measurement

    @property
    def size_ratio(self) -> float:
        """Optimised over original stored size (dense file, or CSR for pruned models)."""
        opt = self.optimized
        stored = opt.sparse_bytes if self.method in ("magnitude", "structured") else opt.size_bytes
        return stored / self.original.size_bytes

    @property
    def speedup(self) -> float:
        return self.optimized.tokens_per_s / self.original.tokens_per_s

    @property
    def perplexity_change(self) -> float:
        """Relative perplexity change (+0.05 = 5 % worse)."""
        return self.optimized.perplexity / self.original.perplexity - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "size_ratio": self.size_ratio,
            "speedup": self.speedup,
            "perplexity_change": self.perplexity_change,
        }


def serialized_size(model: Any) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (works for int8 packed weights too)."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def measure(
    model: Any, tokenizer: Any, texts: Sequence[str], *, repeats: int = 3, quantized: bool = False
) -> Measurement:
    """Size, sparsity, perplexity and forward-pass speed of ``model`` on ``texts``."""
    import torch

    if not texts:
        raise InvalidRequest("measurement needs evaluation texts")
    model.eval()
    encs = [tokenizer(t, return_tensors="pt")["input_ids"] for t in texts]
    latencies, tokens = [], 0
    with torch.no_grad():
        model(input_ids=encs[0])  # warm-up (kernel selection, lazy init)
        for _ in range(repeats):
            for ids in encs:
                t0 = time.perf_counter()
                model(input_ids=ids)
                latencies.append(time.perf_counter() - t0)
                tokens += ids.shape[1]
    size = serialized_size(model)
    return Measurement(
        size_bytes=size,
        sparse_bytes=size if quantized else sparse_bytes(model),
        sparsity=0.0 if quantized else weight_sparsity(model),
        perplexity=perplexity(model, tokenizer, list(texts)).perplexity,
        p50_ms=latency_percentiles(latencies, (50,))["p50_ms"],
        tokens_per_s=tokens / sum(latencies),
    )


def optimize_model(
    model: Any,
    tokenizer: Any,
    method: str,
    *,
    sparsity: float = 0.5,
    calibration_texts: Sequence[str] = (),
) -> Any:
    """A new, optimised copy of ``model`` (the original is left untouched)."""
    if method == "dynamic-int8":
        return quantize_dynamic_int8(model)
    if method == "static-int8":
        return quantize_static_int8(model, tokenizer, calibration_texts)
    if method in ("magnitude", "structured"):
        return pruned_copy(model, sparsity, method)  # type: ignore[arg-type]
    raise InvalidRequest(f"unknown optimisation method {method!r}; choose from {METHODS}")


def optimize_and_compare(
    model: Any,
    tokenizer: Any,
    method: str,
    eval_texts: Sequence[str],
    *,
    sparsity: float = 0.5,
    calibration_texts: Sequence[str] = (),
    repeats: int = 3,
) -> tuple[Any, OptimizationReport]:
    """Optimise, then measure original and optimised side by side on ``eval_texts``."""
    optimized = optimize_model(
        model, tokenizer, method, sparsity=sparsity, calibration_texts=calibration_texts
    )
    quantized = method.endswith("int8")
    original_m = measure(model, tokenizer, eval_texts, repeats=repeats)
    optimized_m = measure(optimized, tokenizer, eval_texts, repeats=repeats, quantized=quantized)
    report = OptimizationReport(
        method=method,
        sparsity_target=None if quantized else sparsity,
        original=original_m,
        optimized=optimized_m,
    )
    logger.info(
        "%s: size x%.2f, speed x%.2f, perplexity %+.1f%%",
        method,
        report.size_ratio,
        report.speedup,
        100 * report.perplexity_change,
    )
    return optimized, report


__all__ = [
    "METHODS",
    "Measurement",
    "OptimizationReport",
    "measure",
    "optimize_and_compare",
    "optimize_model",
    "serialized_size",
]
