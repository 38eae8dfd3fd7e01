"""One evaluation run end to end: load the base model (and a verified adapter),
score it on a domain's held-out set, compare with the base model, grade, and
record the result on the leaderboard. Used by ``qlp eval`` and the jobs API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.data.capsules import sample_path
from qlp_ray.evaluate.leaderboard import Leaderboard, default_leaderboard_path
from qlp_ray.evaluate.report import EvaluationReport, build_report
from qlp_ray.evaluate.runner import evaluate_model, load_eval_set
from qlp_ray.models.base import base_model_id, load_base
from qlp_ray.registry.store import Registry

logger = logging.getLogger(__name__)

#: Training facts copied from an adapter's ``qlp.json`` metrics into the evaluation
#: (they drive the recommendations); the value is the key the report expects.
TRAINING_FACTS = {
    "train_loss": "train_loss",
    "eval_loss": "eval_loss",
    "eval_loss_after": "eval_loss",
    "n_train_examples": "n_train_examples",
    "train_examples": "n_train_examples",
}


@dataclass
class EvaluationRun:
    target: str  # adapter id, or "base"
    domain: str
    dataset: str
    report: EvaluationReport
    baseline_metrics: dict[str, float] | None
    leaderboard_id: int | None
    where: dict[str, Any] | None = None  # where the scoring ran (placed_run.run_where_placed)


def _training_facts(metadata: dict[str, Any]) -> dict[str, float]:
    metrics = metadata.get("metrics", {}) if isinstance(metadata, dict) else {}
    out: dict[str, float] = {}
    for key, name in TRAINING_FACTS.items():
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def score_records(
    cfg: QLPConfig,
    records: list[dict[str, str]],
    *,
    adapter_id: str | None = None,
    version: int | None = None,
    baseline: bool = True,
    device: str = "cpu",
    openvino_device: str = "CPU",
) -> dict[str, Any]:
    """The metrics of the base model or ``adapter_id`` on ``records`` (and of the base
    model beside it with ``baseline``), computed on the torch ``device``. Runs wherever
    the scheduler placed it: it reads only the model, the registry and its arguments."""
    del openvino_device  # evaluation computes with torch
    model, tokenizer = load_base(cfg, device=device)
    max_new = cfg.evaluation.max_new_tokens
    max_len = cfg.model.max_seq_len
    baseline_metrics = None
    facts: dict[str, float] = {}
    if adapter_id is None:
        target = "base"
        metrics = evaluate_model(
            model, tokenizer, records, max_new_tokens=max_new, max_length=max_len
        )
    else:
        from peft import PeftModel

        rec = Registry(cfg).verify(adapter_id, version, expected_base_model=base_model_id(cfg))
        target = adapter_id
        facts = _training_facts(rec.metadata)
        peft_model = PeftModel.from_pretrained(model, str(rec.path))
        metrics = evaluate_model(
            peft_model, tokenizer, records, max_new_tokens=max_new, max_length=max_len
        )
        if baseline:
            with peft_model.disable_adapter():
                baseline_metrics = evaluate_model(
                    peft_model, tokenizer, records, max_new_tokens=max_new, max_length=max_len
                )
    return {"target": target, "metrics": metrics, "baseline": baseline_metrics, "facts": facts}


def run_evaluation(
    cfg: QLPConfig,
    *,
    domain: str,
    adapter_id: str | None = None,
    version: int | None = None,
    data: str | Path | None = None,
    limit: int | None = None,
    baseline: bool = True,
    record: bool = True,
) -> EvaluationRun:
    """Evaluate the base model or ``adapter_id`` on ``data`` (default: held-out samples).

    With a reachable Ray cluster the scoring runs as a Ray task where the scheduler places
    workload ``inference`` (the records travel with it; an adapter evaluation stays on the
    driver's node, whose disk holds the registry's trust keys); else in this process."""
    from qlp_ray.evaluate.placed_run import run_where_placed

    dataset = Path(data) if data is not None else sample_path(domain, "heldout")
    records = load_eval_set(dataset)[:limit] if limit else load_eval_set(dataset)
    scores, where = run_where_placed(
        cfg,
        "inference",
        "torch",
        score_records,
        {
            "cfg": cfg,
            "records": records,
            "adapter_id": adapter_id,
            "version": version,
            "baseline": baseline,
        },  # fmt: skip
        pin_to_driver=adapter_id is not None,
    )
    target, baseline_metrics = scores["target"], scores["baseline"]
    report = build_report(
        {**scores["metrics"], **scores["facts"]}, cfg.evaluation, baseline=baseline_metrics
    )
    entry = None
    if record:
        board = Leaderboard(default_leaderboard_path(cfg))
        entry = board.record(target, report, domain=domain, dataset=str(dataset))
    logger.info("evaluation of %s on %s: grade %s", target, dataset.name, report.grade)
    return EvaluationRun(target, domain, str(dataset), report, baseline_metrics, entry, where)


__all__ = ["EvaluationRun", "run_evaluation", "score_records"]
