"""How serving and training share a cluster's CPUs. Pure: the scheduler actor feeds it state.

The rule (the scheduler applies it when ``qlp serve`` deploys and before every training run):

1. **Serving leaves a training slot.** The Serve replicas reserve what ``serve.*_num_cpus``
   asks, unless that would leave the cluster less than one training worker's CPUs
   (``train.cpus_per_worker``) free; then every replica's reservation shrinks by the same
   factor so exactly that slot stays free. On 2 CPUs the default 1.5 (compositor 1.0,
   router 0.5) becomes 1.0 (0.67 + 0.33) and 1 CPU stays free; on 8 or 64 CPUs nothing
   changes. Reservations are Ray's logical CPUs: the replicas still run on every core.
2. **Training takes the workers that fit.** A run asks for ``workers`` bundles of
   ``cpus_per_worker`` (and GPUs); it gets as many as fit in what is free now, at least
   one. When none fits, it waits with the reason (what it needs, what is free, who holds
   the rest) and fails with that reason after ``train.placement_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

EPS = 1e-6


@dataclass(frozen=True)
class ServingShare:
    """CPUs per replica of each Serve deployment, and why."""

    cpus: dict[str, float]
    kept_for_training: float
    reason: str


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") or "0"


def share_serving(
    requested: Mapping[str, tuple[float, int]],
    cluster_cpus: float,
    training_slot: float,
) -> ServingShare:
    """Apply rule 1. ``requested``: deployment -> (CPUs per replica, replicas)."""
    total = sum(cpus * replicas for cpus, replicas in requested.values())
    budget = max(cluster_cpus - training_slot, 0.0)
    if training_slot <= 0 or total <= budget + EPS or total <= 0:
        kept = max(cluster_cpus - total, 0.0)
        return ServingShare(
            {name: cpus for name, (cpus, _) in requested.items()},
            kept,
            f"{_fmt(cluster_cpus)} CPUs: serving reserves {_fmt(total)} as configured; "
            f"{_fmt(kept)} CPU free for training",
        )
    factor = budget / total
    # floor to 3 decimals: the rounded sum must not eat into the training slot
    cpus = {name: int(c * factor * 1000) / 1000 for name, (c, _) in requested.items()}
    parts = ", ".join(f"{name} {_fmt(c)}" for name, c in cpus.items())
    return ServingShare(
        cpus,
        training_slot,
        f"{_fmt(cluster_cpus)} CPUs: serving reserves {_fmt(budget)} ({parts}; asked "
        f"{_fmt(total)}); {_fmt(training_slot)} CPU free for training",
    )


@dataclass(frozen=True)
class TrainingPlacement:
    """Rule 2's answer: ``workers`` > 0 when the run can start now, else ``reason`` says why."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    reason: str
    holders: dict[str, float] = field(default_factory=dict)
    node_grants: dict[str, float] = field(default_factory=dict)  # node -> CPUs granted

    @property
    def placed(self) -> bool:
        return self.workers > 0


def place_training(
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    free_per_node: Mapping[str, Mapping[str, float]],
    holders: Mapping[str, float] | None = None,
) -> TrainingPlacement:
    """Apply rule 2 to the free resources of each node (``{"CPU": .., "GPU": ..}``).

    ``holders`` (who reserves CPUs now, e.g. ``{"compositor": 1.0}``) only feeds the reason.
    """
    holders = dict(holders or {})
    per_node = {}  # workers each node can take, freest node first
    for node, free in sorted(free_per_node.items(), key=lambda kv: -kv[1].get("CPU", 0.0)):
        cpu_fit = int((free.get("CPU", 0.0) + EPS) // cpus_per_worker) if cpus_per_worker else 10**6
        gpu_fit = int((free.get("GPU", 0.0) + EPS) // gpus_per_worker) if gpus_per_worker else 10**6
        per_node[node] = min(cpu_fit, gpu_fit)
    fits = sum(per_node.values())
    need = f"{_fmt(cpus_per_worker)} CPU" + (
        f" + {_fmt(gpus_per_worker)} GPU" if gpus_per_worker else ""
    )
    most_cpu = max((f.get("CPU", 0.0) for f in free_per_node.values()), default=0.0)
    held = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(holders.items(), key=lambda kv: -kv[1]))
    free_txt = f"{_fmt(most_cpu)} CPU free on the freest node" + (
        f" ({_fmt(max((f.get('GPU', 0.0) for f in free_per_node.values()), default=0.0))} GPU)"
        if gpus_per_worker
        else ""
    )
    if fits == 0:
        reason = f"needs {need} per worker, {free_txt}" + (f"; held by: {held}" if held else "")
        return TrainingPlacement(0, cpus_per_worker, gpus_per_worker, reason, holders)
    placed = min(workers, fits)
    grants, left = {}, placed
    for node, n in per_node.items():
        if left and n:
            take = min(left, n)
            grants[node] = take * cpus_per_worker
            left -= take
    reason = f"{placed} of {workers} worker(s) of {need} placed; {free_txt} before"
    return TrainingPlacement(placed, cpus_per_worker, gpus_per_worker, reason, holders, grants)


__all__ = ["ServingShare", "TrainingPlacement", "place_training", "share_serving"]
