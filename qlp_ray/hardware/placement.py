"""Workload placement by the capability table. Pure: the scheduler actor feeds it state.

A workload goes to the first entry of its preference list (``hardware.capabilities``)
that has an *available* device: alive, not busier than ``busy_threshold``, fewer than
``max_inflight`` workloads running, and enough free memory. Among equally preferred
devices the least loaded wins (ties rotate). ``None`` means "every capable device is
busy or restarting, wait"; :class:`NoCapableDevice` means no registered device could
ever run it (absent class, or too little memory everywhere).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qlp_ray.core.config import WORKLOADS
from qlp_ray.core.errors import InvalidRequest, NoCapableDevice


@dataclass
class DeviceState:
    """What the scheduler knows about one device actor."""

    key: str  # unique in the cluster: "<node id>/<device key>"
    device_class: str
    node_id: str
    avx512: bool = False
    alive: bool = True
    inflight: int = 0
    utilization: float = 0.0
    total_memory_bytes: int | None = None
    free_memory_bytes: int | None = None


def selector_matches(selector: str, state: DeviceState) -> bool:
    """``"pcore"`` matches P-core devices, ``"pcore+avx512"`` only those with AVX-512."""
    cls, _, flag = selector.partition("+")
    return state.device_class == cls and (flag != "avx512" or state.avx512)


def preference_rank(workload: str, state: DeviceState, table: Mapping[str, Sequence[str]]) -> int:
    """Index of the first selector of ``workload`` that matches, or ``-1``."""
    for rank, selector in enumerate(table.get(workload, ())):
        if selector_matches(selector, state):
            return rank
    return -1


def check_workload(workload: str, table: Mapping[str, Sequence[str]]) -> None:
    if workload not in WORKLOADS:
        raise InvalidRequest(f"unknown workload kind {workload!r}; known: {list(WORKLOADS)}")
    if not table.get(workload):
        raise NoCapableDevice(f"the capability table lists no device for {workload!r}")


def choose_device(
    workload: str,
    states: Sequence[DeviceState],
    table: Mapping[str, Sequence[str]],
    *,
    memory_bytes: int = 0,
    preferred: str | None = None,
    busy_threshold: float = 0.9,
    max_inflight: int = 2,
    turn: int = 0,
) -> DeviceState | None:
    """The device to run ``workload`` on now, ``None`` to wait, or raise NoCapableDevice.

    ``preferred`` (a device key or class) is tried first when it is available.
    ``turn`` rotates ties so equal devices share the load.
    """
    check_workload(workload, table)
    capable = [(rank, s) for s in states if (rank := preference_rank(workload, s, table)) >= 0]
    if not capable:
        present = sorted({s.device_class for s in states}) or ["none"]
        raise NoCapableDevice(
            f"no device can run {workload!r}: it needs one of {list(table[workload])}, "
            f"present: {present}"
        )
    if memory_bytes and all(
        s.total_memory_bytes is not None and s.total_memory_bytes < memory_bytes for _, s in capable
    ):
        raise NoCapableDevice(
            f"no device capable of {workload!r} has {memory_bytes / 2**20:.0f} MiB of memory"
        )

    def available(s: DeviceState) -> bool:
        if not s.alive or s.inflight >= max_inflight or s.utilization > busy_threshold:
            return False
        return not (
            memory_bytes and s.free_memory_bytes is not None and s.free_memory_bytes < memory_bytes
        )

    ready = [(rank, s) for rank, s in capable if available(s)]
    if not ready:
        return None
    if preferred:
        for _, s in ready:
            if preferred in (s.key, s.device_class):
                return s
    best_rank = min(rank for rank, _ in ready)
    tier = [s for rank, s in ready if rank == best_rank]
    least = min(s.inflight for s in tier)
    tier = sorted((s for s in tier if s.inflight == least), key=lambda s: s.key)
    return tier[turn % len(tier)]


__all__ = [
    "DeviceState",
    "NoCapableDevice",
    "check_workload",
    "choose_device",
    "preference_rank",
    "selector_matches",
]
