"""Per-adapter serving analytics over time, from the feedback store's request log.

``GET /v1/admin/analytics`` is the in-memory summary of one gateway replica since it
started; this module reads the store every replica writes to, so the series covers every
replica and restarts. Per adapter (the request's ``model`` label: adapter id, base model or
``external:<model>``) and time bucket: requests, latency p50/p95/p99 (exact, from the
rows), rated requests, successes (thumbs up or rating >= ``success_rating``, the
experiments' definition), mean rating, and cost and savings against the reference model of
``prices.yaml`` from the request's token counts. Pure apart from the store read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.serve.telemetry.cost import EXTERNAL_LABEL_PREFIX, CostLedger, PriceTable

BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_BUCKETS = 2000
SUCCESS_RATING = 4


def bucket_seconds(bucket: str) -> int:
    if bucket not in BUCKETS:
        raise InvalidRequest(f"`bucket` must be one of {sorted(BUCKETS)}, got {bucket!r}",
                             param="bucket")  # fmt: skip
    return BUCKETS[bucket]


def window(
    bucket: str, since: float | None, until: float | None, now: float
) -> tuple[float, float]:
    """``[since, until)`` aligned to bucket starts; default the last 60 buckets; 400 when
    it spans more than ``MAX_BUCKETS`` buckets or ends before it starts."""
    size = bucket_seconds(bucket)
    end = until if until is not None else now
    start = since if since is not None else end - 60 * size
    start = math.floor(start / size) * size
    if end <= start:
        raise InvalidRequest("`until` must be after `since`", param="until")
    if (end - start) / size > MAX_BUCKETS:
        raise InvalidRequest(f"at most {MAX_BUCKETS} buckets of a {bucket}; narrow `since`",
                             param="since")  # fmt: skip
    return start, end


def _success(kind: str, value: float | None) -> bool | None:
    if value is None:
        return None
    if kind == "thumbs":
        return value > 0
    if kind == "rating":
        return value >= SUCCESS_RATING
    return None


def series(
    requests: Iterable[Any],
    feedback: Iterable[Any],
    *,
    bucket: str,
    prices: PriceTable,
    external_price_entry: str | None = None,
) -> list[dict[str, Any]]:
    """One point per (bucket, adapter) with requests; sorted by time, then adapter.

    ``requests``: rows with ``id, ts, model, latency_ms, prompt_tokens, completion_tokens``;
    ``feedback``: rows with ``request_id, kind, value`` (the last thumbs/rating per request
    and kind counts; feedback on requests outside ``requests`` is ignored).
    """
    size = bucket_seconds(bucket)
    ledger = CostLedger(prices)
    where: dict[str, tuple[int, str]] = {}
    groups: dict[tuple[int, str], dict[str, Any]] = defaultdict(
        lambda: {"latency": [], "cost": 0.0, "savings": 0.0, "fb": {}}
    )
    for r in requests:
        key = (int(r.ts // size) * size, r.model)
        where[r.id] = key
        g = groups[key]
        if r.latency_ms is not None:
            g["latency"].append(float(r.latency_ms))
        external = r.model.startswith(EXTERNAL_LABEL_PREFIX)
        priced_as = (external_price_entry or r.model) if external else r.model
        rc = ledger.price(priced_as, int(r.prompt_tokens or 0), int(r.completion_tokens or 0))
        g["cost"] += rc.cost_usd
        g["savings"] += rc.savings_usd
        g.setdefault("n", 0)
        g["n"] += 1
    for f in feedback:
        key = where.get(f.request_id)
        if key is not None and f.kind in ("thumbs", "rating"):
            groups[key]["fb"][(f.request_id, f.kind)] = f.value  # the latest one counts
    out = []
    for (t, model), g in sorted(groups.items()):
        lat = np.asarray(g["latency"]) if g["latency"] else None
        verdicts: dict[str, bool] = {}
        ratings = []
        up = down = 0
        for (rid, kind), value in g["fb"].items():
            ok = _success(kind, value)
            if ok is not None:
                verdicts[rid] = verdicts.get(rid, False) or ok
            if kind == "rating" and value is not None:
                ratings.append(float(value))
            elif kind == "thumbs" and value is not None:
                up, down = up + (value > 0), down + (value <= 0)
        rated, wins = len(verdicts), sum(verdicts.values())
        out.append({
            "t": t,
            "time": datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "adapter": model,
            "requests": g["n"],
            "p50_ms": None if lat is None else round(float(np.percentile(lat, 50)), 3),
            "p95_ms": None if lat is None else round(float(np.percentile(lat, 95)), 3),
            "p99_ms": None if lat is None else round(float(np.percentile(lat, 99)), 3),
            "rated": rated,
            "successes": wins,
            "success_rate": wins / rated if rated else None,
            "mean_rating": round(sum(ratings) / len(ratings), 4) if ratings else None,
            "thumbs_up": up,
            "thumbs_down": down,
            "cost_usd": round(g["cost"], 9),
            "savings_usd": round(g["savings"], 9),
        })  # fmt: skip
    return out


__all__ = ["BUCKETS", "MAX_BUCKETS", "SUCCESS_RATING", "bucket_seconds", "series", "window"]
