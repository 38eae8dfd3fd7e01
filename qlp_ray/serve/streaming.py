"""A request's choices streamed to the client as server-sent events.

Each choice is a stream of events from the compositor (``generate_stream``): ``{"text":
delta}`` while it runs, then one final event with the rest of the text,
``finish_reason`` and token counts (:func:`is_final`). The gateway awaits every choice's
first event before it answers, so an error up to then (unknown adapter, tampered
signature, a prompt too long for the model) is still a JSON 4xx; :func:`sse_stream` turns
the rest into OpenAI chunks (:mod:`qlp_ray.serve.http.sse`), ends with ``[DONE]``, and
on an error after the first byte ends with an error event instead. When the client goes
away, the generator is closed and ``close`` cancels the compositor streams, which drops
their rows from the decoder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from qlp_ray.core.errors import QLPError
from qlp_ray.serve.http.errors import unwrap
from qlp_ray.serve.http.sse import DONE, ChunkFormat, error_event, sse

logger = logging.getLogger(__name__)

T = TypeVar("T")
Event = dict[str, Any]


def is_final(event: Event) -> bool:
    """Whether ``event`` is a choice's last (it carries the finish reason and counts)."""
    return "finish_reason" in event


async def merged(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """``(index, item)`` from all ``streams`` as they come; the first error is raised.
    Closing this iterator stops reading the rest."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item, None, False))
        except Exception as exc:  # raised to the reader
            queue.put_nowait((index, None, exc, True))
            return
        queue.put_nowait((index, None, None, True))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    live = len(tasks)
    try:
        while live:
            index, item, exc, ended = await queue.get()
            if exc is not None:
                raise exc
            if ended:
                live -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


def usage_of_finals(finals: Sequence[Event]) -> dict[str, int]:
    """Usage of the choices: the prompt counted once, the completions summed."""
    prompt = int(finals[0]["prompt_tokens"])
    completion = sum(int(f["completion_tokens"]) for f in finals)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _error_bytes(exc: BaseException, request_id: str) -> bytes:
    original = unwrap(exc)
    if isinstance(original, QLPError):
        return error_event(original.message, original.error_type, original.param, original.code)
    logger.error("stream of request %s failed", request_id, exc_info=original)
    return error_event(
        f"internal server error (request {request_id}); see the server log",
        "server_error",
        None,
        "internal_error",
    )


async def sse_stream(
    fmt: ChunkFormat,
    streams: Sequence[AsyncIterator[Event]],
    firsts: Sequence[Event],
    *,
    info: Callable[[], dict[str, Any]],
    on_done: Callable[[list[Event], list[str]], Awaitable[None]],
    close: Callable[[], None],
    request_id: str,
) -> AsyncIterator[bytes]:
    """The SSE body of choices ``streams`` whose first events ``firsts`` were read already.

    ``info()`` is the ``qlp`` object put on the last chunk; ``on_done(finals, texts)`` runs
    once every choice has ended, before ``[DONE]``; ``close()`` always runs at the end (it
    cancels what is still running, e.g. when the client disconnected).
    """
    n = len(streams)
    finals: list[Event | None] = [None] * n
    texts = [""] * n
    complete = False

    def chunks(index: int, event: Event) -> list[bytes]:
        texts[index] += event["text"]
        if not is_final(event):
            return [sse(fmt.text(index, event["text"]))] if event["text"] else []
        finals[index] = event
        chunk = fmt.text(index, event["text"], event["finish_reason"])
        last = all(f is not None for f in finals)
        if not last:
            return [sse(chunk)]
        if not fmt.include_usage:
            return [sse({**chunk, "qlp": info()})]
        ended = [f for f in finals if f is not None]
        return [sse(chunk), sse({**fmt.usage(usage_of_finals(ended)), "qlp": info()})]

    try:
        for index in range(n):
            opening = fmt.opening(index)
            if opening is not None:
                yield sse(opening)
        for index, event in enumerate(firsts):
            for data in chunks(index, event):
                yield data
        running = [i for i in range(n) if finals[i] is None]
        async for j, event in merged([streams[i] for i in running]):
            for data in chunks(running[j], event):
                yield data
        if any(f is None for f in finals):
            raise RuntimeError("a choice's stream ended without its final event")
        await on_done([f for f in finals if f is not None], texts)
        complete = True
        yield DONE
    except Exception as exc:  # after the first byte: the stream ends with an error event
        yield _error_bytes(exc, request_id)
    finally:
        if not complete:
            logger.info("stream of request %s ended early; cancelling its generations",
                        request_id)  # fmt: skip
        close()


__all__ = ["Event", "is_final", "merged", "sse_stream", "usage_of_finals"]
