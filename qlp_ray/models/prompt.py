"""The prompt template the models are trained and served with (Alpaca-like)::

### Instruction:
<instruction>

### Input:            (only when there is input)
<input>

### Response:
<completion>
"""

from __future__ import annotations

from typing import Any

from qlp_ray.core.errors import InvalidRequest

INSTRUCTION_MARKER = "### Instruction:\n"
INPUT_MARKER = "### Input:\n"
RESPONSE_MARKER = "### Response:\n"


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - capsule field name
    """The model prompt for an instruction and optional input, ending with the response marker."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise InvalidRequest("instruction must be a non-empty string", param="instruction")
    if not isinstance(input, str):
        raise InvalidRequest(f"input must be a string, got {type(input).__name__}", param="input")
    text = f"{INSTRUCTION_MARKER}{instruction.strip()}\n\n"
    if input.strip():
        text += f"{INPUT_MARKER}{input.strip()}\n\n"
    return text + RESPONSE_MARKER


def parse_prompt(text: str) -> tuple[str, str] | None:
    """Inverse of :func:`format_prompt`: ``(instruction, input)``, or None if not templated."""
    if not text.startswith(INSTRUCTION_MARKER) or not text.endswith(RESPONSE_MARKER):
        return None
    body = text[len(INSTRUCTION_MARKER) : -len(RESPONSE_MARKER)]
    instruction, sep, rest = body.partition(f"\n\n{INPUT_MARKER}")
    if not sep:
        return instruction.removesuffix("\n\n"), ""
    return instruction, rest.removesuffix("\n\n")


def chat_template_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    """The prompt of chat ``messages`` (``{"role", "content"}``, text) rendered by the
    tokenizer's own chat template, ending where the assistant's turn begins; ``None`` when
    the tokenizer has no template (the built-in tiny model: the Alpaca-like format above)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
