"""Where the router's work runs (``router.offload``): the rule and the bookkeeping, no Ray.

Two scopes of work:

* ``batch`` — embedding many texts at once (``qlp router train|eval``, ``POST
  /v1/admin/routes/evaluate``): goes to the scheduler's device actors as ``embedding``
  workloads, split into chunks so several devices can share it;
* ``request`` — the vector search of one routed request: an actor call costs about a
  millisecond, far more than the search (``benchmarks/offload_search.py``), so only
  ``always`` sends it.

``auto`` → batch on devices; ``always`` → batch and request; ``never`` → neither. Work meant
for devices runs in process when no scheduler is reachable or no device can run it, and
:class:`Placement` says why. :mod:`actors.offload` drives this with Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

OFFLOAD_MODES = ("auto", "always", "never")
Scope = Literal["batch", "request"]

#: texts per ``embedding`` workload: big enough that the actor call is noise, small enough
#: that a long evaluation spreads over the devices
EMBED_CHUNK = 256


def wants_devices(mode: str, scope: Scope) -> bool:
    """Whether ``router.offload = mode`` sends work of ``scope`` to the device actors."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"router.offload must be one of {OFFLOAD_MODES}, got {mode!r}")
    if scope not in ("batch", "request"):
        raise ValueError(f"unknown offload scope {scope!r}")
    return mode == "always" or (mode == "auto" and scope == "batch")


def chunk_bounds(n: int, size: int = EMBED_CHUNK) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in pieces of at most ``size``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [(i, min(i + size, n)) for i in range(0, n, size)]


@dataclass
class Placement:
    """Where one piece of router work ran: on device actors (which, which scheduler jobs)
    or in this process (and why)."""

    kind: str
    where: Literal["device", "process"]
    reason: str = ""
    devices: list[str] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)

    @classmethod
    def on_devices(cls, kind: str, outputs: list[dict[str, Any]]) -> Placement:
        """From the scheduler's answers (``{"device", "node_id", "job_id", ...}`` each)."""
        devices = sorted({f"{o['node_id'][:12]}/{o['device']}" for o in outputs})
        return cls(kind, "device", "", devices, [int(o["job_id"]) for o in outputs])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["EMBED_CHUNK", "OFFLOAD_MODES", "Placement", "chunk_bounds", "wants_devices"]
