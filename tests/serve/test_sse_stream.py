"""OpenAI chunk formatting and the SSE body of streamed choices, without Ray."""

from __future__ import annotations

import asyncio
import json

from qlp_ray.core.errors import AdapterLoadError
from qlp_ray.serve.http.sse import DONE, ChunkFormat, error_event, sse
from qlp_ray.serve.streaming import merged, sse_stream, usage_of_finals


def _final(text, reason="stop", prompt=5, completion=3):
    return {"text": text, "finish_reason": reason, "prompt_tokens": prompt,
            "completion_tokens": completion}  # fmt: skip


async def _events(*events, delay=0.0, fail=None):
    for event in events:
        await asyncio.sleep(delay)
        yield event
    if fail is not None:
        raise fail


def _parse(body: bytes) -> list:
    assert body.endswith(b"\n\n")
    out = []
    for event in body.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ")
        data = event[len(b"data: ") :]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def _run(fmt, streams, *, closed, done, info=None):
    async def main():
        firsts = [await anext(s) for s in streams]

        async def on_done(finals, texts):
            done.append((finals, texts))

        body = b""
        async for data in sse_stream(
            fmt, streams, firsts, info=info or (lambda: {"adapter": "a"}),
            on_done=on_done, close=lambda: closed.append(True), request_id="r1",
        ):  # fmt: skip
            body += data
        return body

    return _parse(asyncio.run(main()))


def test_sse_event_framing():
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    assert json.loads(error_event("m", "t", "p", "c")[6:]) == {
        "error": {"message": "m", "type": "t", "param": "p", "code": "c"}
    }


def test_chat_chunks_with_usage():
    fmt = ChunkFormat("chat", id="chatcmpl-1", model="dataeng", created=7, include_usage=True)
    closed, done = [], []
    stream = _events({"text": "Hel"}, {"text": "lo"}, _final(" you", completion=4))
    chunks = _run(fmt, [stream], closed=closed, done=done)
    assert chunks[-1] == "[DONE]"
    role, *texts, usage = chunks[:-1]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for chunk in chunks[:-1]:
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == "chatcmpl-1"
        assert chunk["model"] == "dataeng" and chunk["created"] == 7
    assert all(c["usage"] is None for c in [role, *texts])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in texts) == "Hello you"
    assert texts[-1]["choices"][0]["finish_reason"] == "stop"
    assert [c["choices"][0]["finish_reason"] for c in texts[:-1]] == [None, None]
    assert usage["choices"] == [] and usage["qlp"] == {"adapter": "a"}
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert closed == [True] and done[0][1] == ["Hello you"]


def test_completion_chunks_without_usage_and_an_empty_final_text():
    fmt = ChunkFormat("completion", id="cmpl-1", model="base", created=1)
    closed, done = [], []
    chunks = _run(fmt, [_events({"text": "ab"}, _final("", "length"))], closed=closed, done=done)
    first, last, end = chunks
    assert end == "[DONE]" and "usage" not in first
    assert first["object"] == "text_completion"
    assert first["choices"] == [{"index": 0, "text": "ab", "logprobs": None,
                                 "finish_reason": None}]  # fmt: skip
    assert last["choices"][0] == {"index": 0, "text": "", "logprobs": None,
                                  "finish_reason": "length"}  # fmt: skip
    assert last["qlp"] == {"adapter": "a"}  # the last chunk names what served it


def test_n_choices_interleave_with_their_index():
    fmt = ChunkFormat("completion", id="cmpl-2", model="m", created=1, include_usage=True)
    closed, done = [], []
    slow = _events({"text": "a"}, {"text": "b"}, _final("c", completion=3), delay=0.01)
    fast = _events({"text": "x"}, _final("y", completion=2))
    chunks = _run(fmt, [slow, fast], closed=closed, done=done)
    texts = {0: "", 1: ""}
    for chunk in chunks[:-2]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == {0: "abc", 1: "xy"}
    # the prompt counted once, completions summed
    assert chunks[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert [f["completion_tokens"] for f in done[0][0]] == [3, 2]


def test_an_error_mid_stream_ends_with_an_error_event_and_no_done():
    fmt = ChunkFormat("completion", id="cmpl-3", model="m", created=1)
    closed, done = [], []
    failing = _events({"text": "a"}, {"text": "b"}, fail=AdapterLoadError("adapter broke"))
    chunks = _run(fmt, [failing], closed=closed, done=done)
    assert "[DONE]" not in chunks and done == [] and closed == [True]
    assert chunks[-1]["error"]["message"] == "adapter broke"
    assert chunks[-1]["error"]["type"] == "adapter_error"
    # an unexpected error says nothing about itself beyond the request id
    chunks = _run(fmt, [_events({"text": "a"}, fail=RuntimeError("/secret/path"))],
                  closed=closed, done=done)  # fmt: skip
    err = chunks[-1]["error"]
    assert err["code"] == "internal_error" and "secret" not in err["message"]


def test_a_client_that_goes_away_closes_the_streams():
    fmt = ChunkFormat("completion", id="cmpl-4", model="m", created=1)
    closed, done = [], []

    async def endless():
        i = 0
        while True:
            i += 1
            await asyncio.sleep(0)
            yield {"text": str(i)}

    async def main():
        stream = endless()
        first = await anext(stream)

        async def on_done(finals, texts):
            done.append(texts)

        body = sse_stream(fmt, [stream], [first], info=dict, on_done=on_done,
                          close=lambda: closed.append(True), request_id="r")  # fmt: skip
        got = [await anext(body) for _ in range(3)]
        await body.aclose()  # what the server does when the client disconnects
        return got

    assert len(asyncio.run(main())) == 3
    assert closed == [True] and done == []


def test_merged_and_usage_helpers():
    async def main():
        return [pair async for pair in merged([_events(1, 2), _events(3)])]

    assert sorted(asyncio.run(main())) == [(0, 1), (0, 2), (1, 3)]
    assert usage_of_finals([_final("a", completion=2)]) == {
        "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}  # fmt: skip
