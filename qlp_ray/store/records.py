"""Validated records of the feedback store (pydantic), one per table.

Validation happens here, at the edge: a bad record raises :class:`InvalidRequest`
naming the field and the bad value, before anything touches the database.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qlp_ray.core.errors import InvalidRequest

FeedbackKind = Literal["thumbs", "rating", "comparison", "correction", "accuracy"]
EventKind = Literal[
    "sign",
    "verify",
    "promote",
    "rollback",
    "register",
    "train",
    "evaluate",
    "experiment",
    "decision",
    "key_rotate",
    "retire",
    "review",
    "lease_takeover",  # another orchestrator took an expired lease over (store.leases)
]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestRecord(_Record):
    """One served request: prompt, response, where it was routed and how long it took."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    ts: float = Field(default_factory=time.time, ge=0)
    model: str = Field(min_length=1, max_length=256)
    adapter_id: str | None = Field(None, max_length=256)
    adapter_version: int | None = Field(None, ge=1)
    domain: str | None = Field(None, max_length=64)
    prompt: str
    response: str
    latency_ms: float | None = Field(None, ge=0)
    prompt_tokens: int | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, ge=0)
    routing: dict[str, Any] | None = None
    experiment: str | None = Field(None, max_length=128)
    variant: str | None = Field(None, max_length=128)
    user_id: str | None = Field(None, max_length=128)
    caller: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _variant_needs_experiment(self) -> RequestRecord:
        if self.variant is not None and self.experiment is None:
            raise ValueError(f"`variant` ({self.variant!r}) given without `experiment`")
        return self


class FeedbackRecord(_Record):
    """User feedback on one request. ``value`` and ``payload`` depend on ``kind``:

    - ``thumbs``: value +1 (up) or -1 (down);
    - ``rating``: value 1..5;
    - ``comparison``: payload ``{"alternative": text}``; value +1 if the served
      response won, -1 if the alternative won;
    - ``correction``: payload ``{"text": corrected output}``;
    - ``accuracy``: value in [0, 1] (e.g. a validation score).
    """

    id: int | None = None
    request_id: str = Field(min_length=1, max_length=64)
    ts: float = Field(default_factory=time.time, ge=0)
    kind: FeedbackKind
    value: float | None = None
    payload: dict[str, Any] | None = None
    user_id: str | None = Field(None, max_length=128)
    caller: str | None = Field(None, max_length=64)
    trusted: bool = False
    review: Literal["pending", "accepted", "rejected"] | None = None
    reviewed_by: str | None = Field(None, max_length=64)
    reviewed_at: float | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> FeedbackRecord:
        v, p = self.value, self.payload or {}
        if v is not None and not math.isfinite(v):
            raise ValueError(f"`value` must be finite, got {v!r}")
        if self.kind in ("thumbs", "comparison") and v not in (1.0, -1.0):
            raise ValueError(f"{self.kind} feedback needs `value` +1 or -1, got {v!r}")
        if self.kind == "rating" and (v is None or not 1.0 <= v <= 5.0):
            raise ValueError(f"rating feedback needs `value` in [1, 5], got {v!r}")
        if self.kind == "accuracy" and (v is None or not 0.0 <= v <= 1.0):
            raise ValueError(f"accuracy feedback needs `value` in [0, 1], got {v!r}")
        if self.kind == "comparison" and not _nonempty_str(p.get("alternative")):
            raise ValueError(f"comparison feedback needs payload.alternative text, got {p!r}")
        if self.kind == "correction" and not _nonempty_str(p.get("text")):
            raise ValueError(f"correction feedback needs payload.text, got {p!r}")
        return self


class RewardRecord(_Record):
    """A scalar reward for one request (from a reward model, a validator, a user)."""

    id: int | None = None
    request_id: str = Field(min_length=1, max_length=64)
    ts: float = Field(default_factory=time.time, ge=0)
    reward: float
    source: str = Field(min_length=1, max_length=128)
    payload: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _finite(self) -> RewardRecord:
        if not math.isfinite(self.reward):
            raise ValueError(f"`reward` must be finite, got {self.reward!r}")
        return self


class FailureRecord(_Record):
    """An A/B-assigned request that failed (``experiment_failures``); ``id`` is the request
    id, so the request log writer queues it like a :class:`RequestRecord`."""

    id: str = Field(min_length=1, max_length=64)
    experiment: str = Field(min_length=1, max_length=64)
    variant: str = Field(min_length=1, max_length=64)
    ts: float = Field(default_factory=time.time, ge=0)
    status: int = Field(ge=100, le=599)
    error: str | None = Field(None, max_length=128)
    latency_ms: float | None = Field(None, ge=0)
    user_id: str | None = Field(None, max_length=128)


class EventRecord(_Record):
    """A deployment / audit event (sign, verify, promote, rollback, decision, ...) with numbers."""

    id: int | None = None
    ts: float = Field(default_factory=time.time, ge=0)
    kind: EventKind
    adapter_id: str | None = Field(None, max_length=256)
    version: int | None = Field(None, ge=1)
    actor: str | None = Field(None, max_length=128)
    payload: dict[str, Any] | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=256)


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def build(record_type: type[_Record], /, **fields: Any) -> Any:
    """Construct a record, turning validation errors into one :class:`InvalidRequest`."""
    try:
        return record_type(**fields)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["loc"]:
                loc = ".".join(str(p) for p in err["loc"])
                msg = f"`{loc}`: {msg} (got {err['input']!r})"
            parts.append(msg)
        raise InvalidRequest(f"invalid {record_type.__name__}: " + "; ".join(parts)) from exc
