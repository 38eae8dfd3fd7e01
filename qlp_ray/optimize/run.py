"""``qlp optimize`` end to end: base model + a domain's data -> optimised model + report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.capsules import load_capsules, sample_path
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.models.base import load_base
from qlp_ray.optimize.compare import METHODS, OptimizationReport, optimize_and_compare

logger = logging.getLogger(__name__)


def _texts(path: Path, limit: int) -> list[str]:

    out = []
    for capsule in load_capsules(path)[:limit]:
        pc = to_prompt_completion(capsule)
        out.append(pc["prompt"] + " " + pc["completion"])
    return out


def run_optimization(
    cfg: QLPConfig,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    domain: str = "api",
    output: str | Path | None = None,
) -> tuple[Any, OptimizationReport]:
    """Optimise the configured base model and measure it against the original on
    ``domain``'s held-out samples (calibrating on its training samples).

    With ``output``, a pruned model is saved there (safetensors) and the report
    as ``optimization.json``; int8 models are measured but not saved, since
    their packed weights have no safetensors format.
    """

    oc = cfg.optimize
    method = method or oc.method
    if method not in METHODS:
        raise InvalidRequest(f"unknown optimisation method {method!r}; choose from {METHODS}")
    sparsity = oc.sparsity if sparsity is None else sparsity
    model, tokenizer = load_base(cfg)
    eval_texts = _texts(sample_path(domain, "heldout"), oc.eval_samples)
    calib = _texts(sample_path(domain, "train"), oc.calibration_samples)
    optimized, report = optimize_and_compare(
        model,
        tokenizer,
        method,
        eval_texts,
        sparsity=sparsity,
        calibration_texts=calib,
        repeats=oc.repeats,
    )
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        if method in ("magnitude", "structured"):
            optimized.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
        (out / "optimization.json").write_text(json.dumps(report.to_dict(), indent=1))
        logger.info("optimisation report written to %s", out / "optimization.json")
    return optimized, report


def _optimize_report(cfg: QLPConfig, device: str = "cpu", openvino_device: str = "CPU", **kw):
    """The task body of :func:`run_optimization_placed`: the report only (a quantized
    model does not travel back; with ``output`` it is saved where the task ran)."""
    del device, openvino_device  # torch int8 kernels and pruning run on the CPU
    return run_optimization(cfg, **kw)[1]


def run_optimization_placed(
    cfg: QLPConfig,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    domain: str = "api",
    output: str | Path | None = None,
) -> tuple[OptimizationReport, dict[str, Any]]:
    """:func:`run_optimization` where the scheduler places workload ``inference_int8``
    when a Ray cluster is reachable (with ``output``, on the driver's node, whose disk it
    writes), else in this process; returns the report and where it ran."""
    from qlp_ray.evaluate.placed_run import run_where_placed

    method = method or cfg.optimize.method
    if method not in METHODS:  # fail before placing anything
        raise InvalidRequest(f"unknown optimisation method {method!r}; choose from {METHODS}")
    kwargs = {"cfg": cfg, "method": method, "sparsity": sparsity, "domain": domain,
              "output": None if output is None else str(Path(output).resolve())}  # fmt: skip
    return run_where_placed(
        cfg, "inference_int8", "torch-cpu", _optimize_report, kwargs,
        pin_to_driver=output is not None,
    )  # fmt: skip


__all__ = ["run_optimization", "run_optimization_placed"]
