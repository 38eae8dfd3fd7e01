"""Run a command's work where the scheduler places it when a Ray cluster is reachable
(``RAY_ADDRESS`` or qlp's own running cluster, as ``qlp devices`` decides), else in this
process with the reason logged. Used by ``qlp eval`` and ``qlp optimize``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qlp_ray.core.config import QLPConfig

logger = logging.getLogger(__name__)


def _reachable(cfg: QLPConfig) -> tuple[bool, str]:
    from qlp_ray.core.runtime import connect_existing

    try:
        if connect_existing(cfg):
            return True, ""
        return False, "no Ray cluster reachable (RAY_ADDRESS unset, no qlp cluster running)"
    except Exception as exc:  # noqa: BLE001 - an unreachable cluster means: run here
        return False, f"Ray cluster not reachable ({type(exc).__name__}: {exc})"


def run_where_placed(
    cfg: QLPConfig,
    kind: str,
    backend: str,
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    pin_to_driver: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """``fn(**kwargs, device=..., openvino_device=...)`` and where it ran: a placed Ray task
    (:func:`actors.launch.run_placed`) or, without Ray, this process on the CPU."""
    ok, why = _reachable(cfg)
    if not ok:
        logger.info("%s runs in this process: %s", kind, why)
        where = {"where": "in-process", "workload": kind, "device_class": "cpu",
                 "node_id": None, "torch_device": "cpu", "reason": why}  # fmt: skip
        return fn(**kwargs, device="cpu", openvino_device="CPU"), where
    from actors.launch import run_placed  # lazy: loads ray

    return run_placed(kind, backend, fn, kwargs, pin_to_driver=pin_to_driver, cfg=cfg.hardware)


def describe(where: dict[str, Any]) -> str:
    """One line for a command's output: where its work ran."""
    if where["where"] != "ray":
        return f"ran in this process on CPU: {where['reason']}"
    return (
        f"ran as Ray task {where['placement']} on {where['device_class']} "
        f"(node {str(where['node_id'])[:12]}): {where['reason']}"
    )


__all__ = ["describe", "run_where_placed"]
