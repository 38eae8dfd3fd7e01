"""Wire models and the OpenAI error mapping, without Ray (FastAPI TestClient)."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from qlp_ray.core.errors import AdapterNotFound, InvalidRequest, SignatureError
from qlp_ray.models.composition import multiplex_id, parse_multiplex_id
from qlp_ray.serve.http.errors import install_error_handlers
from qlp_ray.serve.http.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_logprobs,
    check_limits,
    check_logprobs,
    completion_logprobs,
    with_config_limits,
)


def test_completion_request_defaults_and_single_prompt_list():
    req = CompletionRequest.model_validate({"model": "auto", "prompt": ["one"], "stop": "\n"})
    assert req.prompt == "one" and req.stop == ["\n"] and req.stop_tuple == ("\n",)
    assert req.max_tokens is None and req.temperature == 0.0 and req.n == 1
    assert (
        CompletionRequest.model_validate(
            {"model": "m", "prompt": "p", "temperature": 1}
        ).temperature
        == 1.0
    )


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"model": "auto", "prompt": ["a", "b"]}, "prompt", "got a list of 2"),
        ({"model": "auto", "prompt": 42}, "prompt", "got int"),
        ({"model": "auto", "prompt": "p", "stop": [1]}, "stop", "non-empty strings"),
        ({"model": "auto", "prompt": "  "}, "prompt", "empty"),
        ({"model": "auto", "prompt": "p", "n": 9}, "n", "less than or equal to 8"),
        ({"model": "auto", "prompt": "p", "n": 0}, "n", "greater than or equal to 1"),
        ({"model": "auto", "prompt": "p", "stream": "yes"}, "stream", "boolean"),
        ({"model": "auto", "prompt": "p", "best_of": 2}, "best_of", "Extra inputs"),
        ({"model": "auto", "prompt": "p", "logprobs": 6}, "logprobs", "less than or equal to 5"),
        ({"model": "auto", "prompt": "p", "logprobs": -1}, "logprobs", "greater than or equal"),
        ({"model": "auto", "prompt": "p", "logprobs": True}, "logprobs", "integer"),
        (
            {"model": "auto", "prompt": "p", "max_completion_tokens": 0},
            "max_completion_tokens",
            "greater than or equal to 1",
        ),  # fmt: skip
        (
            {"model": "auto", "prompt": "p", "stream_options": {"x": 1}},
            "stream_options",
            "Extra inputs",
        ),  # fmt: skip
        ({"model": "auto", "prompt": "p", "max_tokens": "5"}, "max_tokens", "integer"),
        ({"model": "auto", "prompt": "p", "top_p": 0}, "top_p", "greater than 0"),
        ({"model": "auto", "prompt": "p", "stop": ["a"] * 5}, "stop", "at most 4"),
        ({"model": "", "prompt": "p"}, "model", "at least 1"),
    ],
)
def test_completion_request_rejections_name_the_field(body, field, text):
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    err = info.value.errors()[0]
    assert err["loc"][0] == field and text in err["msg"]


def test_chat_request_needs_a_user_message():
    ok = ChatCompletionRequest.model_validate(
        {
            "model": "auto",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        }
    )
    assert [m["role"] for m in ok.messages] == ["system", "user"]
    assert ok.messages[-1]["content"] == "u"
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert ChatCompletionRequest.model_validate({"model": "auto", "messages": parts})
    bad = {
        "at least 1": [],
        "last message must have role 'user'": [{"role": "system", "content": "s"}],
        "role must be one of": [{"role": "robot", "content": "x"}],
        "only text parts": [{"role": "user", "content": [{"type": "image_url"}]}],
    }
    for text, messages in bad.items():
        with pytest.raises(ValidationError, match=text):
            ChatCompletionRequest.model_validate({"model": "auto", "messages": messages})


def test_limits_name_the_config_option():
    check_limits("x" * 10, 5, max_prompt_chars=10, max_tokens_limit=5)
    with pytest.raises(InvalidRequest, match="serve.max_prompt_chars=10") as info:
        check_limits("x" * 11, None, max_prompt_chars=10, max_tokens_limit=5)
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequest, match="serve.max_tokens_limit=5") as info:
        check_limits("x", 6, max_prompt_chars=10, max_tokens_limit=5)
    assert info.value.param == "max_tokens"


def test_multiplex_ids_round_trip():
    assert parse_multiplex_id(multiplex_id("dataeng", 3)) == ("dataeng", 3)
    assert parse_multiplex_id("a@b@12") == ("a@b", 12)
    assert parse_multiplex_id("plain") == ("plain", None)
    with pytest.raises(InvalidRequest):
        parse_multiplex_id("x@latest")


@pytest.fixture()
def client():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(body: CompletionRequest) -> dict:
        return {"prompt": body.prompt}

    @app.get("/missing")
    async def missing() -> dict:
        raise AdapterNotFound("model 'x' does not exist", param="model")

    @app.get("/tampered")
    async def tampered() -> dict:
        raise SignatureError("adapter 'x' failed verification")

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret path /srv/keys/private.pem")

    return TestClient(app, raise_server_exceptions=False)


def _error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert r.headers["x-request-id"]
    return body["error"]


def test_error_handlers_map_to_openai_shape(client, caplog):
    assert client.post("/echo", json={"model": "m", "prompt": "p"}).json() == {"prompt": "p"}
    err = _error(
        client.post("/echo", content=b"{not json", headers={"content-type": "application/json"}),
        400,
    )
    assert "not valid JSON" in err["message"]
    err = _error(client.post("/echo", json={"model": "m"}), 400)
    assert err["message"] == "missing required field `prompt`" and err["param"] == "prompt"
    err = _error(client.post("/echo", json={"model": "m", "prompt": "p", "max_tokens": -1}), 400)
    assert err["param"] == "max_tokens" and "(got -1)" in err["message"]
    err = _error(client.get("/missing"), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    err = _error(client.get("/tampered"), 424)
    assert err["type"] == "adapter_error"
    _error(client.get("/nowhere"), 404)
    _error(client.get("/echo"), 405)
    with caplog.at_level(logging.ERROR, logger="qlp_ray.serve.http.errors"):
        err = _error(client.get("/boom"), 500)
    assert "secret" not in err["message"] and err["code"] == "internal_error"
    assert any("RuntimeError" in (r.exc_text or "") for r in caplog.records)


def test_request_id_is_the_servers_and_echoed(client):
    r = client.post("/echo", json={"model": "m", "prompt": "p"})
    assert len(r.headers.get_list("x-request-id")) == 1
    assert r.headers["x-qlp-request-id"] == r.headers["x-request-id"]
    # an id set upstream (the Serve proxy, or a client through it) is echoed by the proxy,
    # not a second time here, and never becomes the request's id: two callers sending the
    # same value get two requests
    ids = set()
    for _ in range(2):
        r = client.post(
            "/echo", json={"model": "m", "prompt": "p"}, headers={"x-request-id": "abc"}
        )
        assert "x-request-id" not in r.headers
        ids.add(r.headers["x-qlp-request-id"])
    assert len(ids) == 2 and "abc" not in ids


def test_openai_options_parse_and_combine():
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", "n": 3, "stream": True, "seed": 7,
         "stream_options": {"include_usage": True}, "max_tokens": 9,
         "max_completion_tokens": 5, "stop": ["a", "bb"]}
    )  # fmt: skip
    assert req.n == 3 and req.stream and req.include_usage and req.seed == 7
    assert req.token_budget == (5, "max_completion_tokens")  # the smaller bound wins
    assert req.stop_tuple == ("a", "bb")
    only = CompletionRequest.model_validate({"model": "m", "prompt": "p", "max_tokens": 4})
    assert only.token_budget == (4, "max_tokens") and not only.include_usage
    assert CompletionRequest.model_validate({"model": "m", "prompt": "p"}).token_budget == (
        None,
        "max_tokens",
    )
    # include_usage means nothing without stream: true
    quiet = CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", "stream_options": {"include_usage": True}}
    )
    assert not quiet.include_usage


def test_chat_logprobs_and_message_fields():
    msgs = [{"role": "user", "content": "hi", "name": "ann"}]
    ok = ChatCompletionRequest.model_validate({"model": "m", "messages": msgs, "logprobs": False})
    assert ok.chat_turns == [{"role": "user", "content": "hi"}]
    assert ok.logprob_count is None
    asked = {"model": "m", "messages": msgs, "logprobs": True}
    assert ChatCompletionRequest.model_validate(asked).logprob_count == 0
    top = ChatCompletionRequest.model_validate({**asked, "top_logprobs": 20})
    assert top.logprob_count == 20
    for extra, field in (({"top_logprobs": 21}, "top_logprobs"), ({"logprobs": 1}, "logprobs")):
        with pytest.raises(ValidationError) as info:
            ChatCompletionRequest.model_validate({**asked, **extra})
        assert info.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError, match="unknown field 'tool_calls'"):
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]}
        )
    text_parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    parts = [{"role": "user", "content": text_parts}]
    assert ChatCompletionRequest.model_validate({"model": "m", "messages": parts}).chat_turns == [
        {"role": "user", "content": "a\nb"}
    ]


def test_unknown_field_is_a_400_naming_it(client):
    err = _error(client.post("/echo", json={"model": "m", "prompt": "p", "tools": []}), 400)
    assert err["param"] == "tools" and "unknown field `tools`" in err["message"]


def test_openapi_says_what_is_validated():
    """The served schema refuses what validation refuses: unknown fields, the shapes of
    prompt/stop/messages, the bounds of n, and the config's limits once filled in."""
    app = FastAPI()

    @app.post("/c")
    async def c(body: CompletionRequest) -> dict:
        return {}

    @app.post("/chat")
    async def chat(body: ChatCompletionRequest) -> dict:
        return {}

    schema = with_config_limits(app.openapi(), max_tokens_limit=64, max_prompt_chars=2000)
    comps = schema["components"]["schemas"]
    completion, chat_req = comps["CompletionRequest"], comps["ChatCompletionRequest"]
    for model in (completion, chat_req, comps["StreamOptions"]):
        assert model["additionalProperties"] is False
    props = completion["properties"]
    assert props["n"]["minimum"] == 1 and props["n"]["maximum"] == 8
    assert {"type": "integer", "minimum": 1, "maximum": 64} in props["max_tokens"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "maximum": 64} in props["max_completion_tokens"][
        "anyOf"
    ]
    string, one_list = props["prompt"]["anyOf"]
    assert string["maxLength"] == 2000 and string["pattern"] == r"\S"
    assert one_list["maxItems"] == 1 and one_list["items"]["maxLength"] == 2000
    assert props["stop"]["anyOf"][1]["maxItems"] == 4
    assert {"type": "integer", "minimum": 0, "maximum": 5} in props["logprobs"]["anyOf"]
    chat_props = chat_req["properties"]
    assert {"type": "integer", "minimum": 0, "maximum": 20} in chat_props["top_logprobs"]["anyOf"]
    assert {"type": "boolean"} in chat_props["logprobs"]["anyOf"]
    message = chat_req["properties"]["messages"]["items"]
    assert message["properties"]["role"]["enum"] == ["system", "user", "assistant"]
    assert message["additionalProperties"] is False and message["required"] == ["role", "content"]


def test_logprobs_refused_where_unavailable_with_a_400_naming_the_field():
    msgs = [{"role": "user", "content": "hi"}]
    plain = CompletionRequest.model_validate({"model": "m", "prompt": "p", "logprobs": 2})
    assert plain.logprob_count == 2
    check_logprobs(plain, "transformers")
    check_logprobs(plain, "vllm")
    cases = [
        (plain, "openvino", False, "logprobs", "not available with serve.backend openvino"),
        (plain, "transformers", True, "logprobs", "external fallback"),
        (
            CompletionRequest.model_validate(
                {"model": "m", "prompt": "p", "logprobs": 0, "stream": True}
            ),
            "transformers",
            False,
            "logprobs",
            "stream: true",
        ),  # fmt: skip
        (
            ChatCompletionRequest.model_validate(
                {"model": "m", "messages": msgs, "top_logprobs": 3}
            ),
            "transformers",
            False,
            "top_logprobs",
            "needs logprobs: true",
        ),  # fmt: skip
    ]
    for body, backend, external, param, text in cases:
        with pytest.raises(InvalidRequest, match=text) as info:
            check_logprobs(body, backend, external=external)
        assert info.value.param == param
    quiet = CompletionRequest.model_validate({"model": "m", "prompt": "p", "stream": True})
    check_logprobs(quiet, "openvino")  # not asked: nothing to refuse


def test_logprob_entries_in_both_openai_shapes():
    entries = [
        {"token": "Hi", "bytes": [72, 105], "logprob": -0.5,
         "top_logprobs": [{"token": "Hi", "bytes": [72, 105], "logprob": -0.5},
                          {"token": "Yo", "bytes": [89, 111], "logprob": -1.5}]},
        {"token": " there", "bytes": list(b" there"), "logprob": -2.0,
         "top_logprobs": [{"token": " you", "bytes": list(b" you"), "logprob": -0.1},
                          {"token": " there", "bytes": list(b" there"), "logprob": -2.0}]},
    ]  # fmt: skip
    legacy = completion_logprobs(entries)
    assert legacy.tokens == ["Hi", " there"] and legacy.token_logprobs == [-0.5, -2.0]
    assert legacy.top_logprobs == [{"Hi": -0.5, "Yo": -1.5}, {" you": -0.1, " there": -2.0}]
    assert legacy.text_offset == [0, 2]
    bare = [{**e, "top_logprobs": []} for e in entries]
    assert completion_logprobs(bare).top_logprobs is None
    chat = chat_logprobs(entries).model_dump()
    assert chat["content"][1]["top_logprobs"][0] == {
        "token": " you", "logprob": -0.1, "bytes": list(b" you")
    }  # fmt: skip
    assert completion_logprobs(None) is None and chat_logprobs(None) is None
