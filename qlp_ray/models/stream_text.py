"""Text of a generation as it grows, token by token, for streaming (pure; no torch).

A streamed completion must add up to the text the same request gets unstreamed: cut
before the first stop string, without a half-decoded character. :class:`TextDeltas`
decodes the tokens so far and hands out only the part that can no longer change:

* a trailing U+FFFD (the start of a multi-byte character split across tokens) waits for
  the next token;
* a tail that could be the start of a stop string (``"\\n"`` of ``"\\n\\n"``) waits until
  the text shows it is not one;
* at the end, :meth:`TextDeltas.finish` gives what is left of the final text (the backend's
  own, stop-truncated), so the deltas always add up to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

_PARTIAL_CHAR = "\ufffd"


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to (not including) the earliest stop string, and whether one was found."""
    cuts = [text.index(s) for s in stops if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def stable_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` (a generation still running) is final: not after a stop
    string, not a tail that may begin one, not a trailing partial character."""
    text, stopped = cut_at_stop(text, stops)
    if stopped:
        return len(text)
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    end = len(text) - hold
    while end > 0 and text[end - 1] == _PARTIAL_CHAR:
        end -= 1
    return end


class TextDeltas:
    """The new, final text after each token of one generation."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = tuple(stops)
        self._ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        """Add a decoded token; the text that became final (often ``""``)."""
        self._ids.append(token)
        text = self._decode(self._ids)
        end = stable_length(text, self._stops)
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta = text[len(self.sent) : end]
        self.sent += delta
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of ``final_text`` (the generation's whole text) not yet handed out."""
        if not final_text.startswith(self.sent):  # a tokenizer whose decode is not prefix-stable
            logger.warning(
                "streamed text %r is not a prefix of the final text %r; sending the rest only",
                self.sent[-40:], final_text[-40:],
            )  # fmt: skip
            return final_text[len(self.sent) :]
        delta = final_text[len(self.sent) :]
        self.sent = final_text
        return delta


__all__ = ["TextDeltas", "cut_at_stop", "stable_length"]
