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


__all__ = ["run_optimization"]
