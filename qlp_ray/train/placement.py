"""Training runs wait for the scheduler's placement before Ray Train starts its workers.

Without it a run that cannot get its CPUs (e.g. Serve replicas hold them) would sit in Ray
Train's worker-group start-up retries forever; with it the run gets the workers that fit
now, or waits with a logged reason and fails with it (:class:`~qlp_ray.core.errors.Unplaceable`)
after ``train.placement_timeout_s``. The rule: :mod:`qlp_ray.hardware.cpu_share`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from qlp_ray.core.config import HardwareConfig

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def placed_workers(
    kind: str,
    workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
    *,
    timeout_s: float,
    hardware: HardwareConfig | None = None,
) -> Iterator[int]:
    """The number of Ray Train workers to start (<= ``workers``), held for the block.

    Without a connected Ray (Ray Train then starts a local one of its own) nothing else
    competes, so the run keeps its ``workers``.
    """
    import ray

    from actors.launch import training_placement  # lazy: loads ray (CLI start-up stays fast)

    if not ray.is_initialized():
        yield workers
        return
    with training_placement(
        kind,
        workers,
        cpus_per_worker,
        1.0 if use_gpu else 0.0,
        timeout_s=timeout_s,
        cfg=hardware,
    ) as record:
        if record["workers"] < workers:
            logger.warning(
                "%s: %d of %d workers fit now, training with %d (%s)",
                kind,
                record["workers"],
                workers,
                record["workers"],
                record["reason"],
            )
        yield int(record["workers"])


# Ray Train's controller polls its workers' status every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S:
# Ray's default (2 s) adds up to that much to every run's start and to its end; an empty
# 1-worker run took 13.6 s with 2 s and 10.5 s with 0.5 s (benchmarks/train_controller_poll.py).
CONTROLLER_POLL_S = "0.5"
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def quick_controller_polls() -> None:
    """Before a ``TorchTrainer`` is built: its controller polls every 0.5 s, unless the user
    set ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (Ray Train passes the driver's value on to
    the controller it starts)."""
    os.environ.setdefault(POLL_ENV, CONTROLLER_POLL_S)


def failure_config(max_failures: int = 0) -> Any:
    """Ray Train's ``FailureConfig`` with bounded controller retries: by default Ray Train
    retries a worker group that cannot start forever (-1); a placed run gets one more try."""
    from ray.train import FailureConfig

    try:
        return FailureConfig(max_failures=max_failures, controller_failure_limit=1)
    except TypeError:  # Ray Train v1 has no controller
        return FailureConfig(max_failures=max_failures)


__all__ = ["failure_config", "placed_workers", "quick_controller_polls"]
