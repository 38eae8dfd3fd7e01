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


def _resolving(fn: Callable[..., Any], config_keys: list[str]) -> Callable[..., Any]:
    """``fn`` taking back the ``QLPConfig`` arguments sent as portable dicts (secrets as
    markers, resolved in the task's process: :mod:`qlp_ray.core.config.secrets`)."""

    def call(**kw: Any) -> Any:
        from qlp_ray.core.config.secrets import resolve_config

        return fn(**{**kw, **{k: resolve_config(kw[k]) for k in config_keys}})

    return call


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
    from qlp_ray.core.config.secrets import portable_config

    # secrets never travel through Ray: a config argument goes as markers
    configs = [k for k, v in kwargs.items() if isinstance(v, QLPConfig)]
    sent = {**kwargs, **{k: portable_config(kwargs[k], f"task-{kind}") for k in configs}}
    task = _resolving(fn, configs) if configs else fn
    return run_placed(kind, backend, task, sent, pin_to_driver=pin_to_driver, cfg=cfg.hardware)


def describe(where: dict[str, Any]) -> str:
    """One line for a command's output: where its work ran."""
    if where["where"] != "ray":
        return f"ran in this process on CPU: {where['reason']}"
    return (
        f"ran as Ray task {where['placement']} on {where['device_class']} "
        f"(node {str(where['node_id'])[:12]}): {where['reason']}"
    )


__all__ = ["describe", "run_where_placed"]
