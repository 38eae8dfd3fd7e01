"""External fallback forwarding against a real local OpenAI-compatible server (no Ray).

The server (tests/openai_double.py) is a test double for a third-party API on port 8181.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from qlp_ray.core.config import ExternalEndpointConfig, load_config
from qlp_ray.core.errors import (
    ConfigError,
    ExternalEndpointError,
    ExternalEndpointTimeout,
    RateLimited,
)
from qlp_ray.serve.external import ExternalFallback, check_external_pricing, resolve_api_key
from qlp_ray.serve.http.protocol import ChatCompletionRequest, CompletionRequest
from qlp_ray.serve.telemetry.cost import PriceTable, external_label
from tests.helpers.openai_double import ANSWER, OpenAIDouble

PORT = 8181
KEY = "sk-test-SECRET-123"


@pytest.fixture(scope="module")
def upstream():
    with OpenAIDouble(PORT) as server:
        yield server


@pytest.fixture
def double(upstream):
    upstream.mode, upstream.delay_s = "ok", 2.0
    upstream.requests.clear()
    return upstream


def _fallback(url: str, timeout_s: float = 5.0) -> ExternalFallback:
    cfg = ExternalEndpointConfig(url=url, model="gpt-4o-mini", api_key=KEY, timeout_s=timeout_s)
    return ExternalFallback(cfg)


def _forward(fb: ExternalFallback, body, prompt: str = "", max_tokens: int = 7) -> dict:
    async def go() -> dict:
        try:
            return await fb.generate(body, prompt, max_tokens)
        finally:
            await fb.aclose()

    return asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_completion_is_forwarded_with_the_key_and_parsed(double):
    body = CompletionRequest(model="auto", prompt="Bake a cake", temperature=0.5, stop=["\n"],
                             seed=3)  # fmt: skip
    gen = _forward(_fallback(double.url), body, "Bake a cake", 7)
    assert gen == {"text": ANSWER, "finish_reason": "stop", "prompt_tokens": 11,
                   "completion_tokens": 9}  # fmt: skip
    (req,) = double.requests
    assert req["path"] == "/v1/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    assert req["json"] == {"model": "gpt-4o-mini", "prompt": "Bake a cake", "max_tokens": 7,
                           "temperature": 0.5, "top_p": 1.0, "stop": ["\n"], "seed": 3}  # fmt: skip


def test_chat_is_forwarded_to_chat_completions(double):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi there"}]
    body = ChatCompletionRequest(model="auto", messages=msgs, max_tokens=5)
    gen = _forward(_fallback(double.url + "/"), body, "ignored for chat", 5)  # trailing / ok
    assert gen["text"] == ANSWER and gen["completion_tokens"] == 9
    (req,) = double.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["json"]["messages"] == msgs and req["json"]["model"] == "gpt-4o-mini"
    assert "prompt" not in req["json"] and "seed" not in req["json"]


def test_upstream_error_is_502_naming_the_endpoint_without_the_key(double, caplog):
    double.mode = "error"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ExternalEndpointError) as info:
        _forward(_fallback(double.url), CompletionRequest(model="auto", prompt="x"), "x")
    err = info.value
    assert err.http_status == 502 and err.code == "external_endpoint_error"
    assert f"{double.url}/completions" in err.message and "HTTP 500" in err.message
    assert "upstream exploded" in err.message
    assert KEY not in err.message and "[key]" in err.message  # the echoed key is scrubbed
    assert KEY not in caplog.text
    assert any("answered HTTP 500" in r.getMessage() for r in caplog.records)


def test_busy_upstream_is_relayed_as_429_with_its_retry_after(double):
    double.mode = "busy"
    with pytest.raises(RateLimited) as info:
        _forward(_fallback(double.url), CompletionRequest(model="auto", prompt="x"), "x")
    err = info.value
    assert err.http_status == 429 and err.retry_after_s == 7.0
    assert f"{double.url}/completions" in err.message and "Rate limit reached" in err.message


def test_timeout_is_504(double):
    double.mode, double.delay_s = "slow", 1.5
    with pytest.raises(ExternalEndpointTimeout) as info:
        _forward(_fallback(double.url, timeout_s=0.3), CompletionRequest(model="auto", prompt="x"))
    assert info.value.http_status == 504 and "0.3 s" in info.value.message
    assert double.url in info.value.message


def test_unreachable_and_unusable_answers_are_502(double):
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(ExternalEndpointError, match="could not reach .*ConnectError"):
        _forward(_fallback(dead), CompletionRequest(model="auto", prompt="x"))
    double.mode = "garbage"
    with pytest.raises(ExternalEndpointError, match="unusable body: missing or invalid field"):
        _forward(_fallback(double.url), CompletionRequest(model="auto", prompt="x"))


def test_key_from_environment_and_repr_hides_it():
    ext = ExternalEndpointConfig(url="http://127.0.0.1:1/v1", model="m", api_key_env="EXT_KEY")
    assert resolve_api_key(ext, {"EXT_KEY": "abc"}) == "abc"
    with pytest.raises(ConfigError, match="EXT_KEY"):
        resolve_api_key(ext, {})
    fb = ExternalFallback(
        ExternalEndpointConfig(url="http://127.0.0.1:1/v1", model="m", api_key=KEY)
    )
    assert KEY not in repr(fb) and fb.label == external_label("m") == "external:m"


def test_config_validation_names_the_options(tmp_path):
    with pytest.raises(ConfigError, match="router.external.url"):
        load_config(overrides={"router": {"fallback": "external"}}, environ={})
    with pytest.raises(ConfigError, match="only one of"):
        load_config(overrides={"router": {"external": {"api_key": "a", "api_key_env": "B"}}},
                    environ={})  # fmt: skip
    with pytest.raises(ConfigError, match="http:// or https://"):
        load_config(overrides={"router": {"external": {"url": "ftp://x"}}}, environ={})
    with pytest.raises(ConfigError, match="router.top_k"):
        load_config(overrides={"router": {"top_k": 5}, "serve": {"max_stack_size": 4}},
                    environ={})  # fmt: skip


def test_pricing_must_name_an_external_entry():
    prices = PriceTable.load()
    ext = {"url": "http://127.0.0.1:1/v1", "model": "gpt-4o-mini"}
    cfg = load_config(overrides={"router": {"fallback": "external", "external": ext}}, environ={})
    check_external_pricing(cfg, prices)  # gpt-4o-mini is an external entry
    cost = prices.price_for("gpt-4o-mini")[1].cost(1_000_000, 0)
    assert cost == pytest.approx(0.15)
    for bad in ({"model": "my-llm"}, {"model": "my-llm", "price_entry": "local-cpu"}):
        cfg = load_config(
            overrides={"router": {"fallback": "external", "external": {**ext, **bad}}},
            environ={},
        )
        with pytest.raises(ConfigError, match="no external price entry"):
            check_external_pricing(cfg, prices)
