"""The Python client against an httpx.MockTransport: requests sent, typed responses/errors."""

from __future__ import annotations

import json

import httpx
import pytest

from qlp_ray.client import Client
from qlp_ray.core.errors import (
    AdapterLoadError,
    AdapterNotFound,
    AuthenticationError,
    InvalidRequest,
    QLPError,
    SignatureError,
)

QLP = {"adapter": "dataeng", "version": 1, "domain": "dataeng", "confidence": 0.71,
       "routed": True, "fallback": False, "latency_ms": 12.5, "request_id": "r1"}  # fmt: skip
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def _error(status: int, code: str | None, message: str = "bad") -> httpx.Response:
    body = {"error": {"message": message, "type": "t", "param": "model", "code": code}}
    return httpx.Response(status, json=body)


def handler(request: httpx.Request) -> httpx.Response:
    seen.append(request)
    if request.url.path == "/v1/models":
        return httpx.Response(
            200, json={"object": "list", "data": [{"id": "auto", "created": 1, "kind": "router"}]}
        )
    body = json.loads(request.content)
    model = body["model"]
    if model.startswith("err-"):
        status, code = model.split("-")[1], model.split("-", 2)[2] if model.count("-") > 1 else None
        return _error(int(status), code)
    if request.url.path == "/v1/completions":
        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "dataeng",
            "choices": [{"index": 0, "text": " SELECT", "finish_reason": "length"}],
            "usage": USAGE, "qlp": QLP})  # fmt: skip
    message = {"role": "assistant", "content": "hi"}
    return httpx.Response(200, json={
        "id": "chat-1", "object": "chat.completion", "created": 1, "model": "dataeng",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": USAGE, "qlp": QLP})  # fmt: skip


seen: list[httpx.Request] = []


@pytest.fixture()
def client():
    seen.clear()
    return Client("http://qlp.test/", api_key="k", transport=httpx.MockTransport(handler))


def test_complete_and_chat_return_typed_responses(client):
    r = client.complete("Write SQL", max_tokens=3, temperature=0.5)
    assert (
        r.choices[0].text == " SELECT" and r.qlp.adapter == "dataeng" and r.usage.total_tokens == 8
    )
    sent = json.loads(seen[-1].content)
    assert sent == {"model": "auto", "prompt": "Write SQL", "max_tokens": 3, "temperature": 0.5}
    assert seen[-1].headers["authorization"] == "Bearer k"
    c = client.chat([{"role": "user", "content": "hi"}], model="dataeng")
    assert c.choices[0].message.content == "hi" and seen[-1].url.path == "/v1/chat/completions"
    assert [m.id for m in client.models().data] == ["auto"]


@pytest.mark.parametrize(
    ("model", "exc"),
    [
        ("err-400-invalid_request", InvalidRequest),
        ("err-401-invalid_api_key", AuthenticationError),
        ("err-404-model_not_found", AdapterNotFound),
        ("err-424-adapter_verification_failed", SignatureError),
        ("err-424-adapter_load_failed", AdapterLoadError),
        ("err-500-internal_error", QLPError),
    ],
)
def test_http_errors_become_typed_exceptions(client, model, exc):
    with pytest.raises(exc, match="bad") as info:
        client.complete("p", model=model)
    assert type(info.value) is exc and info.value.param == "model"


def test_non_json_error_and_unreachable_server():
    c = Client(
        "http://x.test",
        transport=httpx.MockTransport(lambda r: httpx.Response(502, text="gateway down")),
    )
    with pytest.raises(QLPError, match="HTTP 502: gateway down"):
        c.health()

    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(QLPError, match="cannot reach"):
        Client("http://x.test", transport=httpx.MockTransport(refuse)).health()
