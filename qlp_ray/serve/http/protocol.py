"""Pydantic wire models of the OpenAI-compatible HTTP API (requests, responses, errors).

Requests validate strictly (``"5"`` is not an integer) and refuse any field this server
does not implement with a 400 naming it (``extra="forbid"``, as OpenAI's API does), so
``/openapi.json`` (``additionalProperties: false``) says what the server accepts. Shapes a
plain type cannot say (``prompt`` as a string or a list of one, ``stop`` as a string or a
list) carry their JSON schema beside the validator that enforces it. Limits that come from
the config (prompt length, ``max_tokens``) are checked by :func:`check_limits` and written
into the served schema by :func:`with_config_limits`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.format import validate_messages

AUTO_MODEL = "auto"
MAX_CHOICES = 8  # largest ``n``: each choice is a generation of its own
MAX_STOPS = 4
_NOT_BLANK = r"\S"  # a string with at least one non-space character

_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
_MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
        "name": {"type": "string"},
    },
    "required": ["role", "content"],
    "additionalProperties": False,
}
_MESSAGE_KEYS = frozenset(_MESSAGE_SCHEMA["properties"])  # type: ignore[arg-type]
_STOP_STRING = {"type": "string", "minLength": 1}
_STOP_SCHEMA = {
    "anyOf": [
        _STOP_STRING,
        {"type": "array", "items": _STOP_STRING, "maxItems": MAX_STOPS},
        {"type": "null"},
    ],
    "description": f"A stop string or up to {MAX_STOPS}: the text ends before the first one.",
}
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limits: /v1/completions logprobs ...
MAX_TOP_LOGPROBS = 20  # ... and /v1/chat/completions top_logprobs
_LOGPROBS_NOTE = (
    " Log-probabilities are the log-softmax of the model's raw logits (before temperature "
    "and top_p). Not with stream: true, nor with serve.backend openvino or the external "
    "fallback (400)."
)


class StreamOptions(BaseModel):
    """``stream_options`` (read only with ``stream: true``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool = Field(
        False, description="Send a last chunk with `usage` and no choices before [DONE]."
    )


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = Field(min_length=1, description="'auto' (routed), an adapter id or the base id.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate (default: config).")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Upper bound on generated tokens (with max_tokens: the smaller)."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: Annotated[list[str] | None, WithJsonSchema(_STOP_SCHEMA)] = None
    n: int = Field(
        1, ge=1, le=MAX_CHOICES, description="Choices: independent generations of the prompt."
    )
    stream: bool = Field(False, description="Answer as server-sent events (OpenAI chunks).")
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")
    user: str | None = Field(None, max_length=256, description="End-user id, for analytics.")
    metadata: (
        dict[
            Annotated[str, StringConstraints(max_length=64)],
            Annotated[str, StringConstraints(max_length=512)],
        ]
        | None
    ) = Field(None, max_length=16, description="Up to 16 string pairs (A/B experiment targeting).")
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Sampling seed (choice i samples with seed + i)."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else v
        if stops is None:
            return None
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("stop must be a string or a list of non-empty strings")
        if len(stops) > MAX_STOPS:
            raise ValueError(f"stop allows at most {MAX_STOPS} strings, got {len(stops)}")
        return stops

    @property
    def stop_tuple(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def token_budget(self) -> tuple[int | None, str]:
        """The tokens asked for (the smaller of ``max_tokens`` and ``max_completion_tokens``;
        None: the server's default) and the field that set it."""
        asked = [
            (value, name)
            for value, name in (
                (self.max_tokens, "max_tokens"),
                (self.max_completion_tokens, "max_completion_tokens"),
            )
            if value is not None
        ]
        return min(asked) if asked else (None, "max_tokens")

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    @property
    def logprob_count(self) -> int | None:
        """How many alternatives to report per generated token (None: no logprobs)."""
        return None


class CompletionRequest(_Request):
    prompt: Annotated[
        str,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": _NOT_BLANK},
                    {
                        "type": "array",
                        "items": {"type": "string", "pattern": _NOT_BLANK},
                        "minItems": 1,
                        "maxItems": 1,
                    },
                ],
                "description": "The prompt: a string or a list of one string.",
            }
        ),
    ]
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_COMPLETION_LOGPROBS,
        description="Return each generated token's log-probability and this many most likely "
        "alternatives (choices[i].logprobs)." + _LOGPROBS_NOTE,
    )

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    @field_validator("prompt", mode="before")
    @classmethod
    def _single_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        if not isinstance(v, str):
            shown = f"a list of {len(v)}" if isinstance(v, list) else type(v).__name__
            raise ValueError(f"prompt must be a string or a list of one string, got {shown}")
        if not v.strip():
            raise ValueError("prompt must not be empty")
        return v


class ChatMessage(BaseModel):
    """A chat message in a response."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Request):
    messages: Annotated[
        list[dict[str, Any]],
        Field(min_length=1),
        WithJsonSchema(
            {
                "type": "array",
                "items": _MESSAGE_SCHEMA,
                "minItems": 1,
                "description": "OpenAI chat messages; the last one must be from the user.",
            }
        ),
    ]
    logprobs: bool | None = Field(
        None,
        description="Return each generated token's log-probability (choices[i].logprobs."
        "content)." + _LOGPROBS_NOTE,
    )
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Most likely alternatives per token (needs logprobs: true).",
    )

    @field_validator("messages")
    @classmethod
    def _valid_messages(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(v):
            unknown = sorted(set(message) - _MESSAGE_KEYS)
            if unknown:
                raise ValueError(
                    f"messages[{i}] has unknown field {unknown[0]!r} (allowed: role, content, name)"
                )
        validate_messages(v)  # roles, text content parts, last turn from the user
        return v

    @property
    def logprob_count(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0

    @property
    def chat_turns(self) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` with text content (parts joined)."""
        return [{"role": r, "content": t} for r, t in validate_messages(self.messages)]


def check_logprobs(body: _Request, backend: str, *, external: bool = False) -> None:
    """Raise ``InvalidRequest`` (param ``logprobs``) when ``body`` asks for log-probabilities
    this server cannot give: with ``stream: true``, on a backend without them, or from the
    external fallback; ``top_logprobs`` without ``logprobs: true``."""
    top = getattr(body, "top_logprobs", None)
    if top is not None and not getattr(body, "logprobs", False):
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.logprob_count is None:
        return
    if body.stream:
        raise InvalidRequest(
            "logprobs are not available with stream: true; ask without streaming",
            param="logprobs",
        )
    if backend not in LOGPROB_BACKENDS:
        raise InvalidRequest(
            f"logprobs are not available with serve.backend {backend}", param="logprobs"
        )
    if external:
        raise InvalidRequest(
            "logprobs are not available from the external fallback model", param="logprobs"
        )


LOGPROB_BACKENDS = frozenset({"transformers", "vllm"})


def check_limits(
    text: str, max_tokens: int | None, *, max_prompt_chars: int, max_tokens_limit: int,
    param: str = "max_tokens",
) -> None:  # fmt: skip
    """Raise ``InvalidRequest`` naming the limit when a request exceeds the server's limits."""
    if len(text) > max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(text)} characters; the limit is serve.max_prompt_chars="
            f"{max_prompt_chars}",
            param="prompt",
        )
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise InvalidRequest(
            f"{param}={max_tokens} exceeds the limit serve.max_tokens_limit={max_tokens_limit}",
            param=param,
        )


def with_config_limits(
    schema: dict[str, Any], *, max_tokens_limit: int, max_prompt_chars: int
) -> dict[str, Any]:
    """The OpenAPI ``schema`` with the config's limits written in (changed in place and
    returned): the maximum of the token fields, the completion prompt's ``maxLength``. For
    chat the length limit counts the rendered prompt, which no one field's schema can say."""
    schemas = schema.get("components", {}).get("schemas", {})
    prompt = schemas.get("CompletionRequest", {}).get("properties", {}).get("prompt", {})
    for option in prompt.get("anyOf", []):
        target = option.get("items", option)
        target["maxLength"] = max_prompt_chars
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        props = schemas.get(name, {}).get("properties", {})
        for field in ("max_tokens", "max_completion_tokens"):
            for option in props.get(field, {}).get("anyOf", []):
                if option.get("type") == "integer":
                    option["maximum"] = max_tokens_limit
    return schema


# -- responses ----------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class QLPInfo(BaseModel):
    """Which adapter served the request and why."""

    adapter: str | None = Field(description="Adapter id, or None for the base model.")
    version: int | None = None
    domain: str | None = None
    confidence: float | None = Field(None, description="Router cosine score (auto only).")
    routed: bool = Field(description="True when model='auto' chose the target.")
    fallback: bool = Field(
        description="True when the fallback (base model or external endpoint) served a routed "
        "request."
    )
    external: str | None = Field(
        None, description="The external model that served it (router.fallback: external)."
    )
    latency_ms: float
    request_id: str
    experiment: str | None = Field(None, description="A/B experiment that assigned the request.")
    variant: str | None = Field(None, description="The experiment's variant that served it.")


class CompletionLogprobs(BaseModel):
    """A completion choice's log-probabilities (OpenAI's legacy shape). ``text_offset``:
    where each token starts in the choice's text; the tokens cover every generated token
    (``usage.completion_tokens``), also past a stop string the text was cut at."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None


def completion_logprobs(entries: list[dict[str, Any]] | None) -> CompletionLogprobs | None:
    """The legacy completions shape of a generation's logprob entries (backend.py)."""
    if entries is None:
        return None
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    tops = [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries]
    return CompletionLogprobs(
        tokens=[e["token"] for e in entries],
        token_logprobs=[e["logprob"] for e in entries],
        top_logprobs=tops if any(tops) else None,
        text_offset=offsets,
    )


def chat_logprobs(entries: list[dict[str, Any]] | None) -> ChatLogprobs | None:
    return None if entries is None else ChatLogprobs.model_validate({"content": entries})


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    qlp: QLPInfo


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    qlp: QLPInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "qlp"
    kind: Literal["router", "base", "adapter"] = "adapter"
    domain: str | None = None
    version: int | None = None
    signed: bool | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def usage_of(generations: list[dict[str, Any]]) -> Usage:
    """Usage of a request's choices: the prompt counted once, the completions summed."""
    p = int(generations[0]["prompt_tokens"])
    c = sum(int(g["completion_tokens"]) for g in generations)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
