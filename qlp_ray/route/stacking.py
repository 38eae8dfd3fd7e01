"""Top-k routing: send a request that sits between domains to a composed stack of adapters.

Pure Python, no Ray. Given one request's scores (cosine per adapter in centroid mode,
calibrated probability per domain in learned mode) the best target always leads; with
``top_k > 1`` each runner-up of another domain whose score is at least ``min_share`` of
the best joins, up to ``top_k`` members. Weights are proportional to the scores, rounded
to ``weight_decimals`` (so nearby requests share one composed stack in the compositor's
cache) and summing to 1. The decision names the stack in the compositor's canonical
syntax, ``dataeng@2:0.6+frontend@1:0.4``.

Confidence: in centroid mode the best cosine; in learned mode (``additive``) the summed
probability of the member domains — a request split 0.45/0.42 between two domains is
confidently *one of them*, which is what the stack serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qlp_ray.models.composition import AdapterStack, StackMember


@dataclass(frozen=True)
class RouteTarget:
    """The adapter (current version) that serves one scored key."""

    adapter_id: str
    domain: str
    version: int | None = None


@dataclass(frozen=True)
class StackPolicy:
    """How many targets a routed request may be served by, and when runner-ups join."""

    top_k: int = 1
    min_share: float = 0.9
    weight_decimals: int = 1
    additive: bool = False

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.min_share <= 1:
            raise ValueError(f"min_share must be in (0, 1], got {self.min_share}")
        if self.weight_decimals < 1:
            raise ValueError(f"weight_decimals must be >= 1, got {self.weight_decimals}")


def stack_weights(scores: list[float], decimals: int) -> list[float]:
    """Weights proportional to positive ``scores``, rounded, each >= one step, summing to 1.

    The first (best) member absorbs the rounding remainder.
    """
    if not scores or any(s <= 0 for s in scores):
        raise ValueError(f"stack weights need positive scores, got {scores}")
    step = 10.0**-decimals
    total = sum(scores)
    rest = [max(round(s / total, decimals), step) for s in scores[1:]]
    first = round(1.0 - sum(rest), decimals)
    if first < step:  # cannot happen for a sorted list; guards a caller passing unsorted scores
        raise ValueError(f"scores {scores} must be sorted best first")
    return [first, *rest]


def choose_members(
    scores: Mapping[str, float], targets: Mapping[str, RouteTarget], policy: StackPolicy
) -> list[tuple[RouteTarget, float]]:
    """The best-scored key's target plus qualifying runner-ups, best first (may be empty).

    Empty when nothing is scored or the best key has no target (the request then belongs to
    a domain this fleet does not serve).
    """
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    if not ranked or ranked[0][0] not in targets:
        return []
    best_key, best = ranked[0]
    members = [(targets[best_key], best)]
    if best <= 0:
        return members
    domains = {targets[best_key].domain}
    for key, score in ranked[1:]:
        if len(members) >= policy.top_k or score < policy.min_share * best:
            break
        target = targets.get(key)
        if target is None or target.domain in domains:
            continue
        members.append((target, score))
        domains.add(target.domain)
    return members


def decide(
    scores: Mapping[str, float],
    targets: Mapping[str, RouteTarget],
    threshold: float,
    policy: StackPolicy,
) -> dict[str, Any]:
    """A routing decision with top-k stacking (see the module docstring).

    Returns ``{target, version, domain, confidence, fallback, stack}``: ``target`` is an
    adapter id, a canonical stack id, or ``None`` (the fallback); ``stack`` lists the
    members (``adapter``, ``version``, ``domain``, ``weight``, ``score``) or is ``None``.
    """
    members = choose_members(scores, targets, policy)
    best = max(scores.values(), default=0.0)
    if not members:
        return _decision(None, None, None, best, None)
    if policy.additive:
        confidence = sum(score for _, score in members)
    else:
        confidence = members[0][1]
    if confidence < threshold:
        return _decision(None, None, None, confidence, None)
    lead = members[0][0]
    if len(members) == 1:
        return _decision(lead.adapter_id, lead.version, lead.domain, confidence, None)
    weights = stack_weights([score for _, score in members], policy.weight_decimals)
    pairs = list(zip(members, weights, strict=True))
    stack = AdapterStack(tuple(StackMember(t.adapter_id, t.version, w) for (t, _), w in pairs))
    listed = [
        {"adapter": t.adapter_id, "version": t.version, "domain": t.domain,
         "weight": w, "score": round(score, 4)}
        for (t, score), w in pairs
    ]  # fmt: skip
    return _decision(stack.key, None, lead.domain, confidence, listed)


def _decision(
    target: str | None,
    version: int | None,
    domain: str | None,
    confidence: float,
    stack: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    return {
        "target": target,
        "version": version,
        "domain": domain,
        "confidence": round(float(confidence), 4),
        "fallback": target is None,
        "stack": stack,
    }


__all__ = ["RouteTarget", "StackPolicy", "choose_members", "decide", "stack_weights"]
