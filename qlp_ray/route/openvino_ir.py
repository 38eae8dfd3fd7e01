"""OpenVINO IR helpers shared by the padded and packed encoders: atomic export, infer waves."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def run_in_waves(
    requests: Sequence[Any],
    jobs: Sequence[Any],
    feed: Callable[[Any], dict[str, np.ndarray]],
    take: Callable[[Any, np.ndarray], None],
) -> None:
    """Run ``jobs`` on the parallel infer ``requests``, one wave of ``len(requests)`` jobs
    at a time: each job's ``feed(job)`` starts, then ``take(job, output)`` as it is done."""
    for start in range(0, len(jobs), len(requests)):
        wave = list(zip(requests, jobs[start : start + len(requests)], strict=False))
        for request, job in wave:
            request.start_async(feed(job))
        for request, job in wave:
            request.wait()
            take(job, request.get_output_tensor(0).data)


def export_into_place(target: Path, marker: str, export: Callable[[Path], Any]) -> Path:
    """``target``, made by ``export(tmp)`` into a temporary sibling renamed into place unless
    ``target/marker`` exists already: concurrent processes never read half an export."""
    if (target / marker).is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        export(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same export first
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
