"""The one prompt format: how requests become model text, for training and serving alike.

An Alpaca-like template::

    ### Instruction:
    <instruction>

    ### Input:            (only when there is input)
    <input>

    ### Response:
    <completion>

Training pairs are ``prompt`` (up to and including ``### Response:\\n``) and ``completion``
(the answer, stripped, no trailing newline; the trainer appends the tokenizer's EOS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.capsules import Capsule
from qlp_ray.models.prompt import format_prompt, parse_prompt

CHAT_ROLES = ("system", "user", "assistant")


def _as_capsule(record: Capsule | Mapping[str, Any]) -> Capsule:
    if isinstance(record, Capsule):
        return record
    try:
        return Capsule.model_validate(record)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or "record" for e in exc.errors())
        raise InvalidRequest(f"invalid capsule ({fields}): {exc.errors()[0]['msg']}") from exc


def to_prompt_completion(capsule: Capsule | Mapping[str, Any]) -> dict[str, str]:
    """``{"prompt", "completion"}`` for TRL's prompt-completion dataset format."""
    capsule = _as_capsule(capsule)
    return {
        "prompt": format_prompt(capsule.instruction, capsule.input),
        "completion": capsule.output.strip(),
    }


def _message_text(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts are supported
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise InvalidRequest(
                    f"messages[{index}].content: only text parts are supported, got {kind!r}",
                    param=f"messages[{index}].content",
                )
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"messages[{index}].content: a text part needs a string 'text'",
                    param=f"messages[{index}].content",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidRequest(
        f"messages[{index}].content must be a string or a list of text parts, "
        f"got {type(content).__name__}",
        param=f"messages[{index}].content",
    )


def validate_messages(messages: Any) -> list[tuple[str, str]]:
    """Check OpenAI chat messages; return ``[(role, text), ...]``. The last must be ``user``."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequest(
                f"messages[{i}] must be an object, got {type(message).__name__}",
                param=f"messages[{i}]",
            )
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {role!r}",
                param=f"messages[{i}].role",
            )
        parsed.append((role, _message_text(message, i)))
    if parsed[-1][0] != "user":
        raise InvalidRequest(
            f"the last message must have role 'user', got {parsed[-1][0]!r}", param="messages"
        )
    if not parsed[-1][1].strip():
        raise InvalidRequest("the last user message is empty", param="messages")
    return parsed


def chat_to_prompt(messages: Any) -> str:
    """Prompt for OpenAI chat messages: the last user message is the instruction; system
    messages and earlier turns become the input, one ``role: text`` line each."""
    parsed = validate_messages(messages)
    instruction = parsed[-1][1]
    context = [text.strip() for role, text in parsed[:-1] if role == "system" and text.strip()]
    context += [
        f"{role}: {text.strip()}" for role, text in parsed[:-1] if role != "system" and text.strip()
    ]
    return format_prompt(instruction, "\n".join(context))


def routing_text(request: str | Capsule | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """The text the router embeds: the instruction (or last user message), without the template.

    Accepts a raw or templated prompt string, a :class:`Capsule` or capsule dict, or a list of
    OpenAI chat messages.
    """
    if isinstance(request, Capsule):
        return request.instruction.strip()
    if isinstance(request, str):
        parsed = parse_prompt(request)
        text = parsed[0] if parsed else request
        if not text.strip():
            raise InvalidRequest("prompt must be a non-empty string", param="prompt")
        return text.strip()
    if isinstance(request, Mapping):
        if "messages" in request:
            return validate_messages(request["messages"])[-1][1].strip()
        if "instruction" in request:
            instruction = request["instruction"]
        elif "prompt" in request:
            instruction = request["prompt"]
        else:
            raise InvalidRequest("request needs 'instruction', 'prompt' or 'messages'")
        if not isinstance(instruction, str):
            raise InvalidRequest("instruction/prompt must be a string", param="prompt")
        return routing_text(instruction)
    return validate_messages(request)[-1][1].strip()
