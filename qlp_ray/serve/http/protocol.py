"""Pydantic wire models of the OpenAI-compatible HTTP API (requests, responses, errors).

Requests validate strictly (``"5"`` is not an integer) and reject what this server does
not do (``n > 1``, ``stream=true``) with a message naming the field. Limits that come
from the config (prompt length, ``max_tokens``) are checked by :func:`check_limits`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.format import validate_messages

AUTO_MODEL = "auto"


class _Request(BaseModel):
    # strict: no silent "5" -> 5 coercion; unknown OpenAI options are ignored
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1, description="'auto' (routed), an adapter id or the base id.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate (default: config).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[str] | None = Field(None, description="A stop string or up to 4 of them.")
    n: int = Field(1, description="Number of choices; only 1 is supported.")
    stream: bool = Field(False, description="Streaming is not supported.")
    user: str | None = Field(None, max_length=256, description="End-user id, for analytics.")
    metadata: dict[str, str] | None = Field(
        None, description="Up to 16 string key-value pairs (A/B experiment targeting)."
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Sampling seed.")

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"only n=1 is supported, got {v}")
        return v

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if len(v) > 16:
                raise ValueError(f"metadata allows at most 16 pairs, got {len(v)}")
            for key, value in v.items():
                if len(key) > 64 or len(value) > 512:
                    raise ValueError(f"metadata key {key[:64]!r}: keys <= 64, values <= 512 chars")
        return v

    @field_validator("stream")
    @classmethod
    def _no_streaming(cls, v: bool) -> bool:
        if v:
            raise ValueError("streaming is not supported; send stream=false")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else v
        if stops is None:
            return None
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("stop must be a string or a list of non-empty strings")
        if len(stops) > 4:
            raise ValueError(f"stop allows at most 4 strings, got {len(stops)}")
        return stops

    @property
    def stop_tuple(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class CompletionRequest(_Request):
    prompt: str = Field(description="The prompt (a string or a 1-element list of strings).")

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
    messages: list[dict[str, Any]] = Field(
        min_length=1, description="OpenAI chat messages; the last one must be from the user."
    )

    @field_validator("messages")
    @classmethod
    def _valid_messages(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        validate_messages(v)  # roles, text content parts, last turn from the user
        return v


def check_limits(
    text: str, max_tokens: int | None, *, max_prompt_chars: int, max_tokens_limit: int
) -> None:
    """Raise ``InvalidRequest`` naming the limit when a request exceeds the server's limits."""
    if len(text) > max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(text)} characters; the limit is serve.max_prompt_chars="
            f"{max_prompt_chars}",
            param="prompt",
        )
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise InvalidRequest(
            f"max_tokens={max_tokens} exceeds the limit serve.max_tokens_limit={max_tokens_limit}",
            param="max_tokens",
        )


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


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


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


def usage_of(generation: dict[str, Any]) -> Usage:
    p, c = int(generation["prompt_tokens"]), int(generation["completion_tokens"])
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)
