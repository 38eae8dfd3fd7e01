"""Title-like views of the bundled instruction samples.

The bundled samples are chat instructions ("How do I schedule the hourly load of invoices ...?
Source tables have no updated_at column."), the routed texts are short issue titles. Keeping
the first sentence and dropping a generic question lead-in ("How do I", "Can we", "Please")
moves the samples towards the title register. The rules are plain English phrasing, written
without looking at the evaluation titles; they name no tool, project or domain.
"""

from __future__ import annotations

import re

_FIRST_SENTENCE = re.compile(r"(?<=[?.!])\s")
_LEAD_IN = re.compile(
    r"^(how (do|can|should|would) (i|we|you) |how to |what should (i|we) |"
    r"why (does|do|is|are) |can (i|we|you) |please |i want to |we need to |help me )",
    re.IGNORECASE,
)


def title_like(text: str) -> str:
    """First sentence of ``text`` without a question lead-in or end punctuation, capitalised."""
    t = _FIRST_SENTENCE.split(text.strip(), maxsplit=1)[0].rstrip("?.! ")
    t = _LEAD_IN.sub("", t)
    return t[:1].upper() + t[1:] if t else text
