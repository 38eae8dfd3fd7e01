"""The swap board: notices every compositor replica answers, acknowledged (no Ray)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from qlp_ray.core.errors import AdapterLoadError, SignatureError
from qlp_ray.serve.swap_board import (
    NOTICE_SUFFIX,
    Ack,
    SwapBoard,
    board_dir,
    broadcast,
    raise_first_error,
)


def test_notice_acks_and_removal(tmp_path):
    board = SwapBoard(tmp_path / "b")
    assert board.notices() == []  # no directory yet: an empty board
    first = board.post("warm", old_id="a@1", new_id="a@2")
    second = board.post("invalidate", adapter_id="a", version=1, current=2)
    notices = board.notices()
    assert [n.id for n in notices] == [first, second]  # oldest first
    assert notices[0].kind == "warm" and notices[0].args == {"old_id": "a@1", "new_id": "a@2"}
    assert notices[1].args == {"adapter_id": "a", "version": 1, "current": 2}

    board.ack(first, Ack("r1", ["a@2", "a@2:0.5+b@1:0.5"]))
    board.ack(first, Ack("r/2#x", error="bad signature", error_type="SignatureError"))
    board.ack(first, Ack("r1", ["a@2"], node="n1"))  # a replica answers once: file replaced
    acks = {a.replica: a for a in board.acks(first)}
    assert set(acks) == {"r1", "r/2#x"}
    assert acks["r1"].result == ["a@2"] and acks["r1"].error is None
    assert acks["r1"].node == "n1" and acks["r/2#x"].node is None  # where the replica runs
    assert acks["r/2#x"].error == "bad signature"
    assert board.acks(second) == []  # answers belong to their notice

    board.remove(first)
    assert [n.id for n in board.notices()] == [second]
    assert board.acks(first) == []
    board.ack(first, Ack("late", ["a@2"]))  # the route stopped waiting: nothing is written
    assert board.acks(first) == []
    assert not list(board.dir.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown swap-board notice 'reload'"):
        SwapBoard(tmp_path).post("reload")


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, caplog):
    board = SwapBoard(tmp_path)
    good = board.post("warm", old_id="a@1", new_id="a@2")
    (tmp_path / f"000-broken{NOTICE_SUFFIX}").write_text("{not json")
    (tmp_path / f"001-list{NOTICE_SUFFIX}").write_text("[1, 2]")
    (tmp_path / f"002-kind{NOTICE_SUFFIX}").write_text(json.dumps({"kind": "reboot"}))
    (tmp_path / f"{good}.r9.ack.json").write_text("\x00garbage")
    board.ack(good, Ack("r1", ["a@2"]))
    with caplog.at_level(logging.WARNING, logger="qlp_ray.serve.swap_board"):
        assert [n.id for n in board.notices()] == [good]
        assert [a.replica for a in board.acks(good)] == ["r1"]
    assert "unreadable swap-board file" in caplog.text


def test_notices_of_a_dead_poster_are_pruned(tmp_path):
    board = SwapBoard(tmp_path, max_age_s=60)
    old = board.post("warm", old_id="a@1", new_id="a@2")
    path = tmp_path / f"{old}{NOTICE_SUFFIX}"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "posted_at": time.time() - 61}))
    board.ack(old, Ack("r1", ["a@2"]))
    fresh = board.post("warm", old_id="b@1", new_id="b@2")  # posting prunes
    assert [n.id for n in board.notices()] == [fresh]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{fresh}{NOTICE_SUFFIX}"]


def test_board_dir_is_per_app_and_path_safe(tmp_path):
    assert board_dir(tmp_path, "qlp") == tmp_path / "serve" / "swaps" / "qlp"
    assert board_dir(tmp_path, "../x y").parent == tmp_path / "serve" / "swaps"


async def _replica(board: SwapBoard, name: str, delay_s: float) -> None:
    """A replica that answers every notice once, after ``delay_s``."""
    done: set[str] = set()
    while True:
        for notice in board.notices():
            if notice.id not in done:
                done.add(notice.id)
                await asyncio.sleep(delay_s)
                board.ack(notice.id, Ack(name, [notice.args["new_id"]]))
        await asyncio.sleep(0.01)


def test_broadcast_waits_for_every_replica_then_clears_the_board(tmp_path):
    board = SwapBoard(tmp_path)

    async def run():
        replicas = [asyncio.create_task(_replica(board, f"r{i}", 0.05 * i)) for i in (1, 2, 3)]
        t0 = time.monotonic()
        acks = await broadcast(board, "warm", replicas=3, timeout_s=10, poll_s=0.01,
                               old_id="a@1", new_id="a@2")  # fmt: skip
        took = time.monotonic() - t0
        for task in replicas:
            task.cancel()
        return acks, took

    acks, took = asyncio.run(run())
    assert sorted(a.replica for a in acks) == ["r1", "r2", "r3"]
    assert all(a.result == ["a@2"] for a in acks)
    assert 0.15 <= took < 5  # waited for the slowest replica, not for the timeout
    assert list(tmp_path.iterdir()) == []  # notice and answers removed


def test_broadcast_gives_up_after_the_timeout(tmp_path, caplog):
    board = SwapBoard(tmp_path)

    async def run():
        replica = asyncio.create_task(_replica(board, "r1", 0.0))
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="qlp_ray.serve.swap_board"):
            acks = await broadcast(board, "warm", replicas=2, timeout_s=0.3, poll_s=0.02,
                                   old_id="a@1", new_id="a@2")  # fmt: skip
        replica.cancel()
        return acks, time.monotonic() - t0

    acks, took = asyncio.run(run())
    assert [a.replica for a in acks] == ["r1"]
    assert 0.3 <= took < 3
    assert "1 of 2 compositor replicas answered" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_replica_errors_come_back_as_their_error_class():
    raise_first_error([Ack("r1", ["a@2"])])  # no error: nothing raised
    with pytest.raises(SignatureError, match="compositor replica r2: bad signature"):
        raise_first_error(
            [Ack("r1", ["a@2"]), Ack("r2", error="bad signature", error_type="SignatureError")]
        )
    for odd in ("KeyError", "os", None):  # not a QLPError class: a load error (424)
        with pytest.raises(AdapterLoadError, match="boom"):
            raise_first_error([Ack("r3", error="boom", error_type=odd)])


def test_memory_board_behaves_like_the_file_board():
    """What the cluster-wide board actor holds (serve/swap_board_actor.py)."""
    from qlp_ray.serve.swap_board import MemorySwapBoard

    board = MemorySwapBoard(max_age_s=60)
    first = board.post("warm", old_id="a@1", new_id="a@2")
    second = board.post("invalidate", adapter_id="a", version=1, current=2)
    assert [n.id for n in board.notices()] == [first, second]
    assert [n.id for n in board.notices(skip=[first])] == [second]
    board.ack(first, Ack("r1", ["a@2"]))
    board.ack(first, Ack("r1", ["a@2", "x"]))  # a replica answers once: replaced
    board.ack(first, Ack("r2", error="bad", error_type="SignatureError"))
    assert [(a.replica, a.result) for a in board.acks(first)] == [("r1", ["a@2", "x"]), ("r2", [])]
    board.remove(first)
    board.ack(first, Ack("late", ["a@2"]))
    assert board.acks(first) == [] and [n.id for n in board.notices()] == [second]
    with pytest.raises(ValueError, match="unknown swap-board notice"):
        board.post("reload")
    board.remove(second)

    async def run():
        replicas = [asyncio.create_task(_replica(board, f"r{i}", 0.01)) for i in (1, 2)]
        acks = await broadcast(board, "warm", replicas=2, timeout_s=10, poll_s=0.01,
                               old_id="b@1", new_id="b@2")  # fmt: skip
        for task in replicas:
            task.cancel()
        return acks

    assert sorted(a.replica for a in asyncio.run(run())) == ["r1", "r2"]
    assert board.notices() == []  # broadcast took its notice off
    stale = board.post("prefetch", model_ids=["a"], priority=0)
    board._notices[stale] = board._notices[stale].__class__(stale, "prefetch", {}, time.time() - 61)
    assert board.prune() == 1 and board.notices() == []
