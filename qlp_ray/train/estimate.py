"""What a training run will cost before it runs: steps from epochs, tokens, time, money.

Inputs are measured, never assumed: the token count of each record (the base model's
tokenizer, truncated to ``model.max_seq_len``), the training throughput (tokens/s) that
earlier runs on the same base model recorded in the registry (``metrics.tokens_per_s`` of
each version's ``qlp.json``), and the price per million tokens of the local compute entry in
``configs/prices.yaml``. Without an earlier run there is no throughput, and the estimate
says so instead of guessing a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def steps_for_epochs(n_epochs: float, n_records: int, batch_size: int, workers: int = 1) -> int:
    """Optimizer steps that pass over ``n_records`` ``n_epochs`` times (at least one)."""
    if n_epochs <= 0 or n_records <= 0 or batch_size <= 0 or workers <= 0:
        raise ValueError(
            f"n_epochs, n_records, batch_size and workers must be positive, got "
            f"{n_epochs}, {n_records}, {batch_size}, {workers}"
        )
    return max(1, math.ceil(n_epochs * n_records / (batch_size * workers)))


def measured_throughput(records: Iterable[Any], base_model: str) -> dict[str, Any] | None:
    """The most recent registered training run on ``base_model`` with a measured tokens/s:
    ``{"tokens_per_s", "adapter", "version", "created_at"}``; None when there is none.

    ``records`` are registry :class:`~qlp_ray.registry.AdapterRecord` objects."""
    best: dict[str, Any] | None = None
    for rec in records:
        if rec.base_model != base_model:
            continue
        tps = (rec.metadata.get("metrics") or {}).get("tokens_per_s")
        if not isinstance(tps, int | float) or tps <= 0:
            continue
        created = str(rec.metadata.get("created_at", ""))
        # created_at has seconds: within one second the higher version is the newer
        if best is None or (created, rec.version) > (best["created_at"], best["version"]):
            best = {"tokens_per_s": float(tps), "adapter": rec.adapter_id,
                    "version": rec.version, "created_at": created}  # fmt: skip
    return best


def training_estimate(
    token_counts: Sequence[int],
    *,
    steps: int,
    batch_size: int,
    workers: int,
    tokens_per_s: float | None,
    price_per_mtok: float,
    currency: str = "USD",
    train_records: int | None = None,
) -> dict[str, Any]:
    """Tokens the run will process (``steps * batch_size * workers`` records of the mean
    measured length), its time at ``tokens_per_s`` and its cost at ``price_per_mtok``;
    ``epochs`` counts passes over ``train_records`` (default: every counted record)."""
    if not token_counts:
        raise ValueError("no records to estimate from")
    mean_tokens = sum(token_counts) / len(token_counts)
    records_seen = steps * batch_size * workers
    tokens = records_seen * mean_tokens
    seconds = tokens / tokens_per_s if tokens_per_s else None
    return {
        "steps": steps,
        "records_seen": records_seen,
        "epochs": round(records_seen / (train_records or len(token_counts)), 3),
        "mean_tokens_per_record": round(mean_tokens, 1),
        "tokens": int(round(tokens)),
        "tokens_per_s": tokens_per_s,
        "seconds": round(seconds, 1) if seconds is not None else None,
        "cost": round(tokens * price_per_mtok / 1e6, 6),
        "currency": currency,
        "price_per_mtok": price_per_mtok,
    }


__all__ = ["measured_throughput", "steps_for_epochs", "training_estimate"]
