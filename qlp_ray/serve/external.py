"""The external fallback: forward low-confidence requests to an OpenAI-compatible endpoint.

With ``router.fallback: external`` a routed (``model="auto"``) request whose confidence is
below the threshold is sent, completions or chat, to ``router.external.url`` with
``Authorization: Bearer <key>`` (``api_key`` or the variable named by ``api_key_env``).
Its answer comes back as a generation (text, finish reason, token counts) that the gateway
renders in its own OpenAI shape, naming the external model.

Failures never become a 500: an HTTP error, an unreachable endpoint or an unusable body
is a 502 (:class:`ExternalEndpointError`) naming the endpoint; no answer within
``timeout_s`` is a 504 (:class:`ExternalEndpointTimeout`). An endpoint that is rate
limited (429) or overloaded (503) is relayed as our own 429 / 503 with its
``Retry-After`` (default 1 s), so clients back off instead of treating it as a failure.
The key is sent only in the ``Authorization`` header; it is never logged, and it is
scrubbed from any upstream text relayed in an error message.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import httpx

from qlp_ray.core.config import ExternalEndpointConfig, QLPConfig
from qlp_ray.core.errors import (
    ConfigError,
    ExternalEndpointError,
    ExternalEndpointTimeout,
    Overloaded,
    RateLimited,
)
from qlp_ray.serve.telemetry.cost import PriceTable, external_label, price_entry

logger = logging.getLogger(__name__)

_FINISH_REASONS = {"stop", "length", "content_filter"}
_MAX_RELAYED_CHARS = 300
_DEFAULT_RETRY_AFTER_S = 1.0
_MAX_RETRY_AFTER_S = 3600.0


def check_external_pricing(cfg: QLPConfig, prices: Any = None) -> None:
    """With an external fallback, its price entry must exist and be an external one."""
    if cfg.router.fallback != "external":
        return

    table = prices if prices is not None else PriceTable.load()
    name = price_entry(cfg)
    entry = table.models.get(name)
    if entry is None or entry.kind != "external":
        option = "price_entry" if cfg.router.external.price_entry else "model"
        raise ConfigError(
            f"`router.external.{option}` is {name!r}, but configs/prices.yaml has no external "
            f"price entry of that name (external entries: "
            f"{sorted(k for k, v in table.models.items() if v.kind == 'external')}); add one "
            "or set `router.external.price_entry`"
        )


def resolve_api_key(ext: ExternalEndpointConfig, environ: dict[str, str] | None = None) -> str:
    """The key from ``api_key`` or ``api_key_env`` ('' when neither is set)."""
    if ext.api_key_env:
        env = os.environ if environ is None else environ
        key = env.get(ext.api_key_env, "")
        if not key:
            raise ConfigError(
                f"`router.external.api_key_env` names {ext.api_key_env!r}, which is not set "
                "(or empty) in the gateway's environment"
            )
        return key
    return ext.api_key or ""


class ExternalFallback:
    """An async client of one OpenAI-compatible endpoint (one per gateway replica)."""

    def __init__(self, ext: ExternalEndpointConfig, environ: dict[str, str] | None = None) -> None:
        if not (ext.url and ext.model):
            raise ConfigError("`router.external.url` and `router.external.model` must be set")
        self.model = ext.model
        self.endpoint = ext.url.rstrip("/")
        self.timeout_s = ext.timeout_s
        self._key = resolve_api_key(ext, environ)
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the key
        return f"ExternalFallback({self.endpoint!r}, model={self.model!r})"

    @property
    def label(self) -> str:
        return external_label(self.model)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # created in the serving event loop, reused for keep-alive
            headers = {"authorization": f"Bearer {self._key}"} if self._key else {}
            self._client = httpx.AsyncClient(
                headers=headers, timeout=self.timeout_s, follow_redirects=False
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate(self, body: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
        """Forward one request (a chat request when ``body`` has ``messages``)."""
        chat = hasattr(body, "messages")
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
        }
        if chat:
            payload["messages"] = body.messages
        else:
            payload["prompt"] = prompt
        if body.stop:
            payload["stop"] = list(body.stop)
        if body.seed is not None:
            payload["seed"] = body.seed
        path = "/chat/completions" if chat else "/completions"
        data = await self._post(path, payload)
        return self._generation(data, chat, path)

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = self.endpoint + path
        try:
            async with asyncio.timeout(self.timeout_s):
                r = await self._http().post(url, json=payload)
        except (TimeoutError, httpx.TimeoutException):
            logger.warning("external fallback %s: no answer in %.1f s", url, self.timeout_s)
            raise ExternalEndpointTimeout(
                f"the external fallback endpoint {url} did not answer within "
                f"{self.timeout_s:g} s (router.external.timeout_s)"
            ) from None
        except httpx.HTTPError as exc:
            logger.warning("external fallback %s unreachable: %s", url, type(exc).__name__)
            raise ExternalEndpointError(
                f"could not reach the external fallback endpoint {url}: {type(exc).__name__}"
            ) from None
        if r.status_code >= 400:
            detail = self._scrub(_upstream_message(r))
            logger.warning("external fallback %s answered HTTP %d", url, r.status_code)
            if r.status_code in (429, 503):
                retry = _retry_after_s(r)
                cls = RateLimited if r.status_code == 429 else Overloaded
                raise cls(
                    f"the external fallback endpoint {url} is busy (HTTP {r.status_code}), "
                    f"retry after {retry:g} s: {detail}",
                    retry_after_s=retry,
                )
            raise ExternalEndpointError(
                f"the external fallback endpoint {url} answered HTTP {r.status_code}: {detail}"
            )
        try:
            data = r.json()
        except ValueError:
            raise self._bad_body(url, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise self._bad_body(url, "the body is not a JSON object")
        return data

    def _generation(self, data: dict[str, Any], chat: bool, path: str) -> dict[str, Any]:
        url = self.endpoint + path
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            usage = data["usage"]
            prompt_tokens = int(usage["prompt_tokens"])
            completion_tokens = int(usage["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._bad_body(url, f"missing or invalid field {exc!s}") from None
        if not isinstance(text, str):
            raise self._bad_body(url, "the answer has no text")
        finish = choice.get("finish_reason") or "stop"  # some compatible servers send null
        if finish not in _FINISH_REASONS:
            raise self._bad_body(url, f"unsupported finish_reason {finish!r}")
        return {
            "text": text,
            "finish_reason": finish,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }

    def _bad_body(self, url: str, why: str) -> ExternalEndpointError:
        logger.warning("external fallback %s: unusable answer (%s)", url, why)
        return ExternalEndpointError(
            f"the external fallback endpoint {url} answered with an unusable body: {why}"
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[key]") if self._key else text


def _retry_after_s(r: httpx.Response) -> float:
    """The upstream ``Retry-After`` in seconds (delta form; dates and junk → the default)."""
    try:
        value = float(r.headers.get("retry-after", ""))
    except ValueError:
        return _DEFAULT_RETRY_AFTER_S
    return value if 0 <= value <= _MAX_RETRY_AFTER_S else _DEFAULT_RETRY_AFTER_S


def _upstream_message(r: httpx.Response) -> str:
    """The upstream error message (OpenAI error shape if present), shortened."""
    try:
        body = r.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body
    except (ValueError, KeyError, TypeError, AttributeError):
        message = r.text
    text = str(message).strip() or r.reason_phrase
    return text[:_MAX_RELAYED_CHARS]


def external_fallback(cfg: QLPConfig) -> ExternalFallback | None:
    """The gateway's external fallback client, or ``None`` with ``router.fallback: base``."""
    if cfg.router.fallback != "external":
        return None
    check_external_pricing(cfg)
    fb = ExternalFallback(cfg.router.external)
    logger.info("low-confidence requests go to %s (%s)", fb.endpoint, fb.model)
    return fb


__all__ = [
    "ExternalFallback",
    "check_external_pricing",
    "external_fallback",
    "resolve_api_key",
]
