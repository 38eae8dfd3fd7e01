"""Direct Preference Optimization (TRL ``DPOTrainer``) with a LoRA adapter.

Preference pairs come from a JSONL file of ``{prompt, chosen, rejected}`` or
from user feedback (:func:`pairs_from_feedback`): comparisons give (preferred,
other), corrections give (correction, original), and two responses to the same
prompt with different feedback rewards give (better, worse).

The reference model is the base model itself (the adapter disabled), so no
second copy of the weights is held in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.core.jsonl import iter_jsonl
from qlp_ray.train._rlhf_common import RunOptions, sequence_logprob
from qlp_ray.train.rewards import FeedbackEvent, feedback_rewards

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def load_pairs_jsonl(path: str | Path) -> list[PreferencePair]:
    """Read ``{prompt, chosen, rejected}`` lines; errors name the file and line."""

    p = Path(path)
    pairs = []
    for lineno, rec in iter_jsonl(p, "preference file"):
        if not isinstance(rec, dict) or not all(
            isinstance(rec.get(k), str) for k in ("prompt", "chosen", "rejected")
        ):
            raise InvalidRequest(f"{p}:{lineno}: needs string fields prompt, chosen, rejected")
        if rec["chosen"] == rec["rejected"]:
            raise InvalidRequest(f"{p}:{lineno}: chosen and rejected are identical")
        pairs.append(PreferencePair(rec["prompt"], rec["chosen"], rec["rejected"]))
    if not pairs:
        raise InvalidRequest(f"preference file {p} is empty")
    return pairs


def pairs_from_feedback(events: Iterable[FeedbackEvent]) -> list[PreferencePair]:
    """Preference pairs implied by feedback (deduplicated, order-stable)."""
    events = list(events)
    pairs: list[PreferencePair] = []
    for e in events:
        if e.kind == "comparison" and e.other is not None:
            pairs.append(PreferencePair(e.prompt, e.response, e.other))
        elif e.kind == "correction" and e.correction is not None:
            pairs.append(PreferencePair(e.prompt, e.correction, e.response))
    by_prompt: dict[str, list[tuple[str, float]]] = {}
    for (prompt, response), reward in feedback_rewards(
        e for e in events if e.kind in ("thumbs_up", "thumbs_down", "rating")
    ).items():
        by_prompt.setdefault(prompt, []).append((response, reward))
    for prompt, scored in by_prompt.items():
        scored.sort(key=lambda rr: -rr[1])
        for i, (better, r_better) in enumerate(scored):
            for worse, r_worse in scored[i + 1 :]:
                if r_better > r_worse:
                    pairs.append(PreferencePair(prompt, better, worse))
    seen, unique = set(), []
    for pair in pairs:
        if pair not in seen and pair.chosen != pair.rejected:
            seen.add(pair)
            unique.append(pair)
    return unique


def pair_margins(model: Any, tokenizer: Any, pairs: Sequence[PreferencePair]) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt) of each pair (in eval mode)."""
    if not pairs:
        raise InvalidRequest("no preference pairs to score")
    was_training = model.training
    model.eval()
    try:
        return [
            sequence_logprob(model, tokenizer, p.prompt, p.chosen)
            - sequence_logprob(model, tokenizer, p.prompt, p.rejected)
            for p in pairs
        ]
    finally:
        model.train(was_training)


def preference_margin(model: Any, tokenizer: Any, pairs: Sequence[PreferencePair]) -> float:
    """Mean of log p(chosen | prompt) - log p(rejected | prompt) over ``pairs``."""
    margins = pair_margins(model, tokenizer, pairs)
    return sum(margins) / len(margins)


@dataclass
class DPOResult:
    model: Any  # the PeftModel with the trained adapter
    train_loss: float
    metrics: dict[str, float]


def train_dpo(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    output_dir: str,
    eval_pairs: Sequence[PreferencePair] = (),
    steps: int = 40,
    batch_size: int = 8,
    learning_rate: float = 5e-3,
    beta: float = 0.1,
    run: RunOptions = RunOptions(),
) -> DPOResult:
    """Train a LoRA adapter on ``model`` with DPO; returns the adapted model."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise InvalidRequest("DPO needs at least one preference pair")

    def as_dataset(items: Sequence[PreferencePair]) -> Dataset:
        return Dataset.from_list(
            [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in items]
        )

    data = as_dataset(pairs)
    args = DPOConfig(
        beta=beta,
        max_length=256,
        **run.trl_args(
            output_dir=output_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate
        ),
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=as_dataset(eval_pairs) if eval_pairs else None,
        processing_class=tokenizer,
        peft_config=run.lora(),
        callbacks=list(run.callbacks),
    )
    trainer, out = run.fit(trainer)
    logger.info("DPO: %d pairs, %d steps, loss %.4f", len(pairs), steps, out.training_loss)
    return DPOResult(trainer.model, float(out.training_loss), dict(out.metrics))


__all__ = [
    "DPOResult",
    "PreferencePair",
    "load_pairs_jsonl",
    "pairs_from_feedback",
    "preference_margin",
    "train_dpo",
]
