"""Pruning with ``torch.nn.utils.prune``: magnitude (unstructured, global L1) and
structured (whole output rows by L2 norm), one-shot or gradually during
fine-tuning on the cubic schedule of Zhu & Gupta (2017).

Pruned weights are real zeros. Dense storage does not shrink from zeros, so
:func:`sparse_bytes` measures what the weights take in a bitmap-sparse layout
(the non-zero values plus one bit per position).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.train._rlhf_common import device_args

logger = logging.getLogger(__name__)

PruneMethod = Literal["magnitude", "structured"]
KEEP_DENSE = ("lm_head", "embed_tokens")
MIN_SPARSITY, MAX_SPARSITY = 0.1, 0.9


def check_sparsity(sparsity: float) -> None:
    if not MIN_SPARSITY <= sparsity <= MAX_SPARSITY:
        raise InvalidRequest(
            f"sparsity must be between {MIN_SPARSITY} and {MAX_SPARSITY}, got {sparsity}",
            param="sparsity",
        )


def prunable_linears(model: Any, skip: Sequence[str] = KEEP_DENSE) -> list[tuple[str, Any]]:
    """(name, module) of every nn.Linear except the embedding/output head."""
    import torch

    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and not any(name.endswith(s) for s in skip)
    ]


def apply_pruning(
    model: Any, sparsity: float, *, method: PruneMethod = "magnitude", make_permanent: bool = True
) -> Any:
    """Prune ``model`` in place to ``sparsity`` of its prunable linear weights.

    ``magnitude``: global L1 over all prunable weights (layers keep different
    shares). ``structured``: each layer loses ``sparsity`` of its output rows
    (smallest L2 norm). Applying again composes with the existing masks.
    """
    from torch.nn.utils import prune

    if not 0.0 <= sparsity < 1.0:
        raise InvalidRequest(f"sparsity must be in [0, 1), got {sparsity}", param="sparsity")
    layers = prunable_linears(model)
    if not layers:
        raise InvalidRequest("model has no prunable nn.Linear layers")
    if method == "magnitude":
        masked = any(hasattr(m, "weight_mask") for _, m in layers)
        current = weight_sparsity(model)
        # with masks attached, the amount is a share of the still-unpruned weights; without,
        # it is a share of all weights (existing zeros have the lowest magnitude and go first)
        if not masked:
            amount = sparsity
        else:
            amount = 0.0 if sparsity <= current else (sparsity - current) / (1.0 - current)
        prune.global_unstructured(
            [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=amount
        )
    elif method == "structured":
        for _, m in layers:
            prune.ln_structured(m, "weight", amount=sparsity_step(m, sparsity), n=2, dim=0)
    else:
        raise InvalidRequest(f"unknown pruning method {method!r}", param="method")
    if make_permanent:
        remove_reparametrization(model)
    return model


def sparsity_step(module: Any, target: float) -> float:
    """Share of the still-unpruned rows to prune so that ``target`` of all rows are pruned."""
    import torch

    mask = getattr(module, "weight_mask", None)
    rows = module.weight.shape[0]
    alive = rows if mask is None else int((mask.abs().sum(dim=1) > 0).sum())
    want_alive = rows - round(target * rows)
    return 0.0 if alive <= want_alive else float(torch.tensor((alive - want_alive) / alive))


def remove_reparametrization(model: Any) -> None:
    """Bake masks into the weights (``weight = weight_orig * mask``) and drop the hooks."""
    from torch.nn.utils import prune

    for _, m in prunable_linears(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")


def pruned_copy(model: Any, sparsity: float, method: PruneMethod = "magnitude") -> Any:
    check_sparsity(sparsity)
    return apply_pruning(copy.deepcopy(model).eval(), sparsity, method=method)


def weight_sparsity(model: Any) -> float:
    """Share of exact zeros in the prunable linear weights (counting masks if present)."""
    zeros = total = 0
    for _, m in prunable_linears(model):
        w = m.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def sparse_bytes(model: Any) -> int:
    """Bytes of all parameters with the prunable weights stored bitmap-sparse
    (non-zero values + a 1-bit occupancy mask), everything else dense.

    (CSR with int64 indices would be larger than dense below ~67 % sparsity.)"""
    pruned_ids = {id(m.weight) for _, m in prunable_linears(model)}
    total = 0
    for _, p in model.named_parameters():
        t = p.detach()
        if id(p) in pruned_ids:
            total += int((t != 0).sum()) * t.element_size() + (t.numel() + 7) // 8
        else:
            total += t.numel() * t.element_size()
    return total


@dataclass
class GradualSchedule:
    """Cubic sparsity ramp s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3."""

    final_sparsity: float
    start_step: int
    end_step: int
    every: int = 1
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        check_sparsity(self.final_sparsity)
        if not 0 <= self.start_step < self.end_step:
            raise InvalidRequest(
                f"gradual pruning needs 0 <= start_step ({self.start_step}) < end_step "
                f"({self.end_step})"
            )

    def at(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        frac = min(1.0, (step - self.start_step) / (self.end_step - self.start_step))
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        return s_f + (s_i - s_f) * (1.0 - frac) ** 3


def gradual_pruning_callback(schedule: GradualSchedule, method: PruneMethod = "magnitude") -> Any:
    """A ``TrainerCallback`` that raises the sparsity on ``schedule`` while training.

    Masks stay attached during training (pruned weights get zero gradients) and
    are baked in when training ends.
    """
    from transformers import TrainerCallback

    class GradualPruning(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[tuple[int, float]] = []

        def on_step_end(self, args, state, control, model=None, **kw):
            step = state.global_step
            if model is None or step % schedule.every and step != schedule.end_step:
                return
            target = schedule.at(step)
            if target > 0 and (not self.history or target > self.history[-1][1] + 1e-9):
                apply_pruning(model, target, method=method, make_permanent=False)
                self.history.append((step, target))
                logger.debug("gradual pruning: step %d -> sparsity %.3f", step, target)

        def on_train_end(self, args, state, control, model=None, **kw):
            if model is not None:
                final = schedule.final_sparsity
                if not self.history or self.history[-1][1] < final - 1e-9:
                    apply_pruning(model, final, method=method, make_permanent=False)
                    self.history.append((state.global_step, final))
                remove_reparametrization(model)

    return GradualPruning()


def finetune_with_gradual_pruning(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    sparsity: float,
    output_dir: str,
    steps: int = 40,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    method: PruneMethod = "magnitude",
    seed: int = 0,
) -> tuple[Any, list[tuple[int, float]]]:
    """Causal-LM fine-tuning of the full model on ``texts`` while pruning gradually
    to ``sparsity`` (ramp over the first 75 % of steps). Returns (model, schedule history)."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    if not texts:
        raise InvalidRequest("gradual pruning fine-tuning needs training texts")
    schedule = GradualSchedule(sparsity, start_step=0, end_step=max(1, int(0.75 * steps)))
    callback = gradual_pruning_callback(schedule, method)
    data = Dataset.from_list([{"text": t} for t in texts]).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=256),
        batched=True,
        remove_columns=["text"],
    )
    dev = device_args()
    dev.pop("gradient_checkpointing", None)
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        **dev,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[callback],
    )
    trainer.train()
    return trainer.model.eval(), callback.history


__all__ = [
    "GradualSchedule",
    "apply_pruning",
    "check_sparsity",
    "finetune_with_gradual_pruning",
    "gradual_pruning_callback",
    "prunable_linears",
    "pruned_copy",
    "remove_reparametrization",
    "sparse_bytes",
    "weight_sparsity",
]
