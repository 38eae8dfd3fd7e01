"""BatchMerger: Serve batches formed while the backend is busy run as one backend batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from qlp_ray.serve.batching import BatchMerger


def _recording_run(calls: list[list[int]], gate: threading.Event | None = None):
    def run(rows: list[int]) -> list[int | Exception]:
        if gate is not None:
            gate.wait(5)
        calls.append(list(rows))
        return [ValueError(f"bad {r}") if r < 0 else r * 10 for r in rows]

    return run


def test_groups_queued_while_busy_merge_up_to_max_rows_in_order():
    calls: list[list[int]] = []
    gate = threading.Event()
    merger = BatchMerger(_recording_run(calls, gate), max_rows=5)

    async def main():
        first = asyncio.create_task(merger.submit([1]))
        await asyncio.sleep(0.05)  # the backend is busy with [1] (held by the gate)
        rest = [asyncio.create_task(merger.submit(g)) for g in ([2, 3], [4], [5, 6], [7])]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, [await t for t in rest]

    first, rest = asyncio.run(main())
    assert first == [10]
    assert rest == [[20, 30], [40], [50, 60], [70]]
    # [2,3]+[4]+[5,6] fill the 5 rows; [7] would make 6: it waits for the next batch
    assert calls == [[1], [2, 3, 4, 5, 6], [7]]
    assert merger.stats == {"batches": 3, "rows": 7, "largest": 5}


def test_row_errors_stay_in_their_row_and_a_failed_batch_fails_its_groups():
    calls: list[list[int]] = []
    merger = BatchMerger(_recording_run(calls), max_rows=8)
    out = asyncio.run(merger.submit([1, -2, 3]))
    assert out[0] == 10 and out[2] == 30 and isinstance(out[1], ValueError)

    def broken(rows):
        raise RuntimeError("backend down")

    failing = BatchMerger(broken, max_rows=8)
    with pytest.raises(RuntimeError, match="backend down"):
        asyncio.run(failing.submit([1]))
