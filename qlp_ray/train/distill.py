"""Knowledge distillation teacher -> student, two ways.

``method="logits"`` (default): classic temperature distillation on given texts
(Hinton et al.): loss = T^2 * KL(softmax(teacher/T) || softmax(student/T)) per
token, in a small ``transformers.Trainer`` subclass. Robust on small data.

``method="on_policy"``: TRL 1.16's ``DistillationTrainer`` (GKD): the student samples
completions for each prompt and is trained to match the teacher's
next-token distribution on them under a generalised Jensen–Shannon
divergence (``beta`` 0 = forward KL, 1 = reverse KL, 0.5 = JSD), with a
softmax ``temperature``. Teacher and student must share the vocabulary but
may differ in width/depth — e.g. a composed adapter stack (merged) or a
larger base distilled into a LoRA adapter on a smaller one.

:func:`student_teacher_kl` measures the forward KL on held-out text, the
number the training is meant to lower; :func:`on_policy_kl` measures it on
the student's own samples, the quantity the on-policy method optimises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.train._rlhf_common import RunOptions

logger = logging.getLogger(__name__)


def student_teacher_kl(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    temperature: float = 1.0,
) -> float:
    """Mean per-token KL(teacher || student) of next-token distributions on ``texts``."""
    import torch
    import torch.nn.functional as F

    if not texts:
        raise InvalidRequest("no texts to measure KL on")
    if temperature <= 0:
        raise InvalidRequest(f"temperature must be positive, got {temperature}")
    device = next(student.parameters()).device
    total, count = 0.0, 0
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
                s = F.log_softmax(student(input_ids=ids).logits[0].float() / temperature, -1)
                t = F.log_softmax(teacher(input_ids=ids).logits[0].float() / temperature, -1)
                total += float((t.exp() * (t - s)).sum())
                count += ids.shape[1]
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return total / count


def on_policy_kl(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> float:
    """Mean per-token KL(teacher || student) on completions the student samples for ``prompts``."""
    import torch

    texts = []
    student.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt").to(next(student.parameters()).device)
            out = student.generate(
                **enc,
                do_sample=True,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples_per_prompt,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return student_teacher_kl(student, teacher, tokenizer, texts)


def _kl_trainer_class() -> type:
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class KLDistillTrainer(Trainer):
        """Trainer whose loss is the temperature-scaled token KL to a frozen teacher."""

        def __init__(self, *args: Any, teacher: Any, temperature: float, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.teacher = teacher.to(self.args.device).eval()
            self.temperature = temperature

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs["attention_mask"].bool()
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            with torch.no_grad():
                t_logits = self.teacher(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).logits
            T = self.temperature
            s_logp = F.log_softmax(outputs.logits.float() / T, -1)
            t_logp = F.log_softmax(t_logits.float() / T, -1)
            per_token = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
            loss = per_token[mask].mean() * T * T
            return (loss, outputs) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            # no labels here, so the default would skip the loss: eval_loss is the KD loss
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return KLDistillTrainer


def _train_logits(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    args: Any,
    temperature: float,
    callbacks: Sequence[Any],
    eval_texts: Sequence[str] = (),
) -> Any:
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    def tokenized(items: Sequence[str]) -> Dataset:
        return Dataset.from_list([{"text": t} for t in items]).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=256),
            batched=True,
            remove_columns=["text"],
        )

    trainer = _kl_trainer_class()(
        model=student,
        args=args,
        train_dataset=tokenized(texts),
        eval_dataset=tokenized(eval_texts) if eval_texts else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        teacher=teacher,
        temperature=temperature,
        callbacks=list(callbacks),
    )
    return trainer


@dataclass
class DistillResult:
    model: Any
    train_loss: float
    metrics: dict[str, float]


def train_distill(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    data: Sequence[str],
    *,
    output_dir: str,
    eval_texts: Sequence[str] = (),
    method: Literal["logits", "on_policy"] = "logits",
    steps: int = 30,
    batch_size: int = 8,
    max_completion_length: int = 16,
    learning_rate: float = 5e-3,
    temperature: float | None = None,
    beta: float = 0.0,
    use_lora: bool = True,
    run: RunOptions = RunOptions(),
) -> DistillResult:
    """Distil ``teacher`` into ``student`` (a LoRA adapter by default).

    ``data`` holds full texts for ``method="logits"`` and prompts for
    ``method="on_policy"`` (``beta`` and ``max_completion_length`` apply there).
    """
    if not data:
        raise InvalidRequest("distillation needs at least one text or prompt")
    s_vocab = student.get_output_embeddings().weight.shape[0]
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        raise InvalidRequest(
            f"teacher vocabulary ({t_vocab}) differs from the student's ({s_vocab}); "
            "distillation needs a shared tokenizer"
        )
    if not 0.0 <= beta <= 1.0:
        raise InvalidRequest(f"beta must be in [0, 1], got {beta}")
    if temperature is None:  # soft targets off-policy; plain sampling when the student samples
        temperature = 2.0 if method == "logits" else 1.0
    if temperature <= 0:
        raise InvalidRequest(f"temperature must be positive, got {temperature}")
    trl_args = run.trl_args(
        output_dir=output_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate
    )
    peft_cfg = run.lora() if use_lora else None
    if method == "logits":
        from transformers import TrainingArguments

        if peft_cfg is not None:
            from peft import get_peft_model

            student = get_peft_model(student, peft_cfg)
        trl_args.pop("gradient_checkpointing", None)  # not a TrainingArguments concern here
        args = TrainingArguments(remove_unused_columns=False, **trl_args)
        trainer = _train_logits(
            student,
            teacher,
            tokenizer,
            data,
            args=args,
            temperature=temperature,
            callbacks=run.callbacks,
            eval_texts=eval_texts,
        )
    elif method == "on_policy":
        from datasets import Dataset
        from trl import DistillationConfig, DistillationTrainer

        tokenizer.padding_side = "left"
        args = DistillationConfig(
            max_completion_length=max_completion_length,
            temperature=temperature,
            beta=beta,
            **trl_args,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p in data]),
            processing_class=tokenizer,
            peft_config=peft_cfg,
            callbacks=list(run.callbacks),
        )
    else:
        raise InvalidRequest(f"method must be 'logits' or 'on_policy', got {method!r}")
    trainer, out = run.fit(trainer)
    logger.info(
        "distillation (%s): %d items, %d steps, loss %.4f",
        method,
        len(data),
        steps,
        out.training_loss,
    )
    return DistillResult(trainer.model, float(out.training_loss), dict(out.metrics))


__all__ = ["DistillResult", "on_policy_kl", "student_teacher_kl", "train_distill"]
