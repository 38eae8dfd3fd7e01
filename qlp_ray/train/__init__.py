"""Adapter training: SFT, DPO, GRPO/RLOO and distillation of LoRA / AdaLoRA adapters with
TRL + PEFT, in-process or on Ray Train, and the train → sign → register pipeline.

``PEFT_METHODS`` is the one list of adapter training methods; the CLI, the REST API and
the PEFT setup derive their checks and messages from it. It is read from the
``TrainConfig.method`` annotation so that the config stays the only place it is written.
"""

from typing import get_args

from qlp_ray.core.config import TrainConfig

PeftMethod = TrainConfig.model_fields["method"].annotation
"""``Literal`` of the PEFT methods ``train.method`` accepts (usable as a field type)."""

PEFT_METHODS: tuple[str, ...] = get_args(PeftMethod)
"""The PEFT methods, in the order the config lists them: ``("lora", "adalora", "qlora")``."""


def methods_phrase(methods: tuple[str, ...] = PEFT_METHODS) -> str:
    """``"'lora', 'adalora' or 'qlora'"``: the methods quoted for an error message."""
    quoted = [repr(m) for m in methods]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


__all__ = ["PEFT_METHODS", "PeftMethod", "methods_phrase"]
