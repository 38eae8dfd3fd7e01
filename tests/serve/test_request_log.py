"""RequestLogWriter: background group commits into a real SQLite feedback store."""

from __future__ import annotations

import threading
import time

import pytest

from qlp_ray.serve.telemetry.request_log import RequestLogWriter
from qlp_ray.store.database import FeedbackStore
from qlp_ray.store.records import RequestRecord


def _row(i: int | str) -> RequestRecord:
    return RequestRecord(id=f"req-{i}", model="dataeng", prompt=f"prompt {i}", response="ok")


@pytest.fixture()
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    yield s
    s.close()


class _GatedWrites:
    """``write_many`` that blocks until released, recording each batch's size."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store, self.sizes = store, []
        self.gate = threading.Event()

    def __call__(self, rows):
        self.gate.wait(10)
        self.sizes.append(len(rows))
        return self.store.record_requests(rows)


def test_rows_are_committed_and_concurrent_rows_share_a_commit(store):
    writes = _GatedWrites(store)
    writer = RequestLogWriter(writes)
    for i in range(50):  # queued while the first commit is held up
        writer.submit(_row(i))
    assert not writer.wait_committed("req-49", timeout=0.05)  # not in the store yet
    writes.gate.set()
    assert writer.wait_committed("req-49", timeout=5)
    assert writer.flush(timeout=5) and writer.pending == 0
    assert store.get_request("req-49").prompt == "prompt 49"
    assert sum(writes.sizes) == 50 and len(writes.sizes) <= 3  # group commits, not 50
    assert writer.stats() == {"written": 50, "failed": 0, "batches": len(writes.sizes),
                              "pending": 0}  # fmt: skip
    writer.close()


def test_a_bad_row_fails_alone_and_is_counted(store):
    store.record_request(_row("dup"))
    writes = _GatedWrites(store)
    writer = RequestLogWriter(writes)
    for row in (_row(1), _row("dup"), _row(2)):  # the duplicate id fails its insert
        writer.submit(row)
    writes.gate.set()
    assert writer.flush(timeout=5)
    assert writer.written == 2 and writer.failed == 1
    assert {store.get_request(f"req-{i}").prompt for i in (1, 2)} == {"prompt 1", "prompt 2"}
    writer.close()


def test_unknown_id_needs_no_wait_and_close_writes_what_is_queued(store):
    writer = RequestLogWriter(store.record_requests)
    t0 = time.perf_counter()
    assert writer.wait_committed("never-submitted", timeout=5)
    assert time.perf_counter() - t0 < 0.5
    for i in range(20):
        writer.submit(_row(i))
    assert writer.close(timeout=5)  # nothing lost at shutdown
    assert store.get_request("req-19").response == "ok"
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(_row(99))


def test_submit_blocks_when_the_writer_falls_behind(store):
    writes = _GatedWrites(store)
    writer = RequestLogWriter(writes, max_batch=1, max_pending=2)
    writer.submit(_row(0))  # taken by the writer thread, held at the gate
    deadline = time.monotonic() + 5
    while writer.full() or writer._queue:  # wait until row 0 left the queue
        assert time.monotonic() < deadline
        time.sleep(0.01)
    writer.submit(_row(1))
    writer.submit(_row(2))
    assert writer.full()
    done = threading.Event()
    threading.Thread(target=lambda: (writer.submit(_row(3)), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # bounded memory: the producer waits
    writes.gate.set()
    assert done.wait(5)
    assert writer.close(timeout=5)
    assert [store.get_request(f"req-{i}").id for i in range(4)] == [f"req-{i}" for i in range(4)]


def test_on_commit_runs_after_the_commit_with_the_rows_outcome(store):
    store.record_request(_row("dup"))
    writes = _GatedWrites(store)
    writer = RequestLogWriter(writes)
    seen: dict[str, tuple[bool, bool]] = {}

    def on_commit(rid: str):
        def done(ok: bool) -> None:  # (ok, row visible in the store at that moment)
            seen[rid] = (ok, _stored(store, rid))

        return done

    for rid in ("req-1", "req-dup", "req-2"):
        writer.submit(_row(rid.removeprefix("req-")), on_commit(rid))
    assert seen == {}  # nothing resolves before the commit
    writes.gate.set()
    assert writer.flush(timeout=5)
    assert seen == {"req-1": (True, True), "req-2": (True, True), "req-dup": (False, True)}
    assert writer.stats()["written"] == 2 and writer.failed == 1
    writer.close()


def _stored(store: FeedbackStore, rid: str) -> bool:
    return any(r.id == rid for r in store.query_requests(limit=1000))
