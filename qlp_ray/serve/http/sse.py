"""Server-sent events in OpenAI's streaming format (pure: no Ray).

A stream is ``data: <chunk JSON>\\n\\n`` events ending with ``data: [DONE]\\n\\n``:

* chat: ``object: "chat.completion.chunk"``; each choice's first chunk carries
  ``delta: {"role": "assistant", "content": ""}``, then ``delta: {"content": ...}``, and
  its last one ``finish_reason`` (``"stop"`` or ``"length"``);
* completions: ``object: "text_completion"`` with ``choices: [{"index", "text",
  "finish_reason", "logprobs"}]``;
* with ``stream_options.include_usage`` every chunk has ``"usage": null`` and one more
  chunk before ``[DONE]`` has the usage and ``choices: []``.

The last chunk before ``[DONE]`` also carries this server's ``qlp`` object. An error after
the first byte ends the stream with ``data: {"error": {...}}`` (the OpenAI error body) and
no ``[DONE]``: the ``openai`` client raises it as an ``APIError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from qlp_ray.serve.http.errors import error_body

DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"


def sse(data: dict[str, Any]) -> bytes:
    """One ``data:`` event of a JSON object."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_event(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    """The event that ends a stream on an error (the OpenAI error body of JSON answers)."""
    return sse(error_body(message, type_, param, code))


@dataclass(frozen=True)
class ChunkFormat:
    """The fixed fields of one streamed response's chunks, and the chunks themselves."""

    kind: Literal["chat", "completion"]
    id: str
    model: str
    created: int
    include_usage: bool = False

    @property
    def object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def opening(self, index: int) -> dict[str, Any] | None:
        """The chunk that opens choice ``index`` (chat: the assistant role), if any."""
        if self.kind != "chat":
            return None
        delta = {"role": "assistant", "content": ""}
        return self._chunk([{"index": index, "delta": delta, "logprobs": None,
                             "finish_reason": None}])  # fmt: skip

    def text(self, index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        """A chunk of choice ``index``: new ``text`` and, on its last chunk, why it ended."""
        choice: dict[str, Any] = {"index": index}
        if self.kind == "chat":
            choice["delta"] = {"content": text} if text or finish_reason is None else {}
        else:
            choice["text"] = text
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        return self._chunk([choice])

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        """The usage chunk (``include_usage``): no choices."""
        return {**self._chunk([]), "usage": usage}


__all__ = ["DONE", "MEDIA_TYPE", "ChunkFormat", "error_event", "sse"]
