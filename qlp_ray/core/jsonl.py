"""Reading JSONL files with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qlp_ray.core.errors import InvalidRequest


def iter_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed value)`` for every non-blank line of ``path``.

    A missing file or a line that is not JSON raises ``InvalidRequest`` naming both.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"{what} not found: {p}")
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{p}:{lineno}: not valid JSON ({exc.msg})") from exc
