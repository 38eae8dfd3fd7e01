"""The LoRA SFT run one tuning trial trains: TRL ``SFTTrainer`` on prompt/completion
records with the sampled rank, alpha, dropout, learning rate and target modules.

Unlike the production SFT path (:mod:`qlp_ray.train.sft`, which measures held-out
loss once before and once after), a trial evaluates every ``eval_steps`` so ASHA
can stop weak trials early and Optuna sees a learning curve.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.train._rlhf_common import RunOptions

logger = logging.getLogger(__name__)


@dataclass
class SFTTrialResult:
    model: Any
    train_loss: float
    metrics: dict[str, float]


def _dataset(records: Sequence[dict[str, str]], what: str) -> Any:
    from datasets import Dataset

    rows = []
    for i, r in enumerate(records):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
            raise InvalidRequest(f"{what} record {i} needs string 'prompt' and 'completion'")
        rows.append({"prompt": r["prompt"], "completion": r["completion"]})
    if not rows:
        raise InvalidRequest(f"the {what} records are empty")
    return Dataset.from_list(rows)


def train_sft_lora(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    *,
    output_dir: str,
    eval_records: Sequence[dict[str, str]] = (),
    steps: int = 40,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    dropout: float = 0.05,
    max_length: int = 256,
    run: RunOptions = RunOptions(),
) -> SFTTrialResult:
    """Completion-only LoRA SFT; returns the adapted model and the trainer metrics."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        max_length=max_length,
        completion_only_loss=True,
        packing=False,
        per_device_eval_batch_size=max(batch_size, 16),
        **run.trl_args(
            output_dir=output_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate
        ),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(records, "training"),
        eval_dataset=_dataset(eval_records, "held-out") if eval_records else None,
        processing_class=tokenizer,
        peft_config=run.lora(dropout),
        callbacks=list(run.callbacks),
    )
    trainer, out = run.fit(trainer)
    metrics = dict(out.metrics)
    if eval_records:
        metrics.update(trainer.evaluate())
    return SFTTrialResult(trainer.model, float(out.training_loss), metrics)


__all__ = ["SFTTrialResult", "train_sft_lora"]
