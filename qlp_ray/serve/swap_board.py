"""A swap reaching every compositor replica: notices on a shared board, acknowledged.

A Serve handle call lands on one replica and Serve has no public broadcast, so with
``serve.compositor_replicas > 1`` the hot-swap and prefetch routes post their work here
instead. The board is a named Ray actor by default (``serve.swap_board: ray``, see
``serve/swap_board_actor.py``: it holds a :class:`MemorySwapBoard`), so it reaches replicas
on every node; ``files`` keeps it as files in one directory shared by the app's processes
(:class:`SwapBoard`). A notice (``warm`` old → new, ``invalidate`` after the switch,
``prefetch``) is then one JSON file under
``<home>/serve/swaps/<app>/``; every compositor replica polls the board
(``serve.swap_poll_s``), does the work once per notice and writes an acknowledgement beside
it, naming itself and what it did (or the error that stopped it). The route waits for as
many acknowledgements as there are replicas (``serve.swap_warm_timeout_s`` at most), then
removes the notice. Files are written to a temporary name and renamed, so a reader never
sees half a file; an unreadable file is skipped with a warning, never fatal. Pure file
logic, no Ray.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlp_ray.core import errors

logger = logging.getLogger(__name__)

NOTICE_SUFFIX = ".notice.json"
ACK_SUFFIX = ".ack.json"
KINDS = ("warm", "invalidate", "prefetch", "revalidate")


@dataclass(frozen=True)
class Notice:
    """One piece of work for every replica."""

    id: str
    kind: str
    args: dict[str, Any]
    posted_at: float


@dataclass(frozen=True)
class Ack:
    """One replica's answer to a notice: what it did, or why it could not."""

    replica: str
    result: list[str] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    node: str | None = None  # the Ray node the replica runs on


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:  # removed meanwhile: the swap is over
        return None
    except (OSError, ValueError) as exc:
        logger.warning("unreadable swap-board file %s skipped: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


class SwapBoard:
    """Notices and acknowledgements in one directory shared by the app's processes."""

    def __init__(self, directory: str | Path, *, max_age_s: float = 600.0) -> None:
        self.dir = Path(directory)
        self.max_age_s = float(max_age_s)  # older notices are left-overs of a dead gateway

    def post(self, kind: str, **args: Any) -> str:
        """Post a notice; returns its id."""
        if kind not in KINDS:
            raise ValueError(f"unknown swap-board notice {kind!r}; one of {KINDS}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prune()
        notice_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # sorts by time
        payload = {"kind": kind, "args": args, "posted_at": time.time()}
        _write_atomic(self.dir / f"{notice_id}{NOTICE_SUFFIX}", payload)
        return notice_id

    def notices(self, skip: Iterable[str] = ()) -> list[Notice]:
        """Notices on the board, oldest first, but those in ``skip`` (already done)."""
        if not self.dir.is_dir():
            return []
        skip = set(skip)
        found = []
        for path in sorted(self.dir.glob(f"*{NOTICE_SUFFIX}")):
            notice_id = path.name[: -len(NOTICE_SUFFIX)]
            if notice_id in skip:
                continue
            data = _read(path)
            if data is None or data.get("kind") not in KINDS:
                continue
            found.append(
                Notice(notice_id, data["kind"], dict(data.get("args") or {}),
                       float(data.get("posted_at", 0.0)))
            )  # fmt: skip
        return found

    def ack(self, notice_id: str, ack: Ack) -> None:
        """Record ``ack.replica``'s answer to a notice (unless the notice is gone)."""
        if not (self.dir / f"{notice_id}{NOTICE_SUFFIX}").exists():
            return  # the route stopped waiting and removed it
        name = f"{notice_id}.{_safe(ack.replica)}{ACK_SUFFIX}"
        _write_atomic(self.dir / name, {**asdict(ack), "result": list(ack.result)})

    def acks(self, notice_id: str) -> list[Ack]:
        """The answers to a notice so far, one per replica."""
        out = []
        for path in sorted(self.dir.glob(f"{notice_id}.*{ACK_SUFFIX}")):
            data = _read(path)
            if data is not None:
                out.append(Ack(str(data.get("replica")), list(data.get("result") or []),
                               data.get("error"), data.get("error_type"),
                               data.get("node")))  # fmt: skip
        return out

    def remove(self, notice_id: str) -> None:
        """Take a notice and its acknowledgements off the board."""
        for path in self.dir.glob(f"{notice_id}*"):
            path.unlink(missing_ok=True)

    def prune(self) -> int:
        """Remove notices older than ``max_age_s`` (their poster died); returns how many."""
        cutoff = time.time() - self.max_age_s
        stale = [n.id for n in self.notices() if n.posted_at < cutoff]
        for notice_id in stale:
            self.remove(notice_id)
        return len(stale)


class MemorySwapBoard:
    """The same board held in one process's memory: what the cluster-wide board actor
    (:mod:`qlp_ray.serve.swap_board_actor`) keeps. Pure logic, no Ray."""

    def __init__(self, *, max_age_s: float = 600.0) -> None:
        self.max_age_s = float(max_age_s)
        self._notices: dict[str, Notice] = {}
        self._acks: dict[str, dict[str, Ack]] = {}

    def post(self, kind: str, **args: Any) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown swap-board notice {kind!r}; one of {KINDS}")
        self.prune()
        notice_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # sorts by time
        self._notices[notice_id] = Notice(notice_id, kind, dict(args), time.time())
        self._acks[notice_id] = {}
        return notice_id

    def notices(self, skip: Iterable[str] = ()) -> list[Notice]:
        skip = set(skip)
        return [n for i, n in sorted(self._notices.items()) if i not in skip]

    def ack(self, notice_id: str, ack: Ack) -> None:
        if notice_id in self._acks:  # else the route stopped waiting and removed it
            self._acks[notice_id][ack.replica] = ack

    def acks(self, notice_id: str) -> list[Ack]:
        return [a for _, a in sorted(self._acks.get(notice_id, {}).items())]

    def remove(self, notice_id: str) -> None:
        self._notices.pop(notice_id, None)
        self._acks.pop(notice_id, None)

    def prune(self) -> int:
        cutoff = time.time() - self.max_age_s
        stale = [i for i, n in self._notices.items() if n.posted_at < cutoff]
        for notice_id in stale:
            self.remove(notice_id)
        return len(stale)


async def broadcast(
    board: SwapBoard | MemorySwapBoard | Any,
    kind: str,
    *,
    replicas: int,
    timeout_s: float,
    poll_s: float,
    **args: Any,
) -> list[Ack]:
    """Post a notice, wait until ``replicas`` replicas answered it (or ``timeout_s``),
    take it off the board; returns the answers."""
    notice_id = await asyncio.to_thread(board.post, kind, **args)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            acks = await asyncio.to_thread(board.acks, notice_id)
            if len(acks) >= replicas or time.monotonic() >= deadline:
                break
            await asyncio.sleep(poll_s)
    finally:
        await asyncio.to_thread(board.remove, notice_id)
    if len(acks) < replicas:
        logger.warning(
            "swap notice %s (%s %s): %d of %d compositor replicas answered in %.0f s; "
            "the others load the new version on first use", notice_id, kind, args,
            len(acks), replicas, timeout_s,
        )  # fmt: skip
    return acks


def raise_first_error(acks: Iterable[Ack]) -> None:
    """Re-raise the first replica error among ``acks`` as its ``QLPError`` class."""

    for ack in acks:
        if ack.error is not None:
            cls = getattr(errors, ack.error_type or "", None)
            if not (isinstance(cls, type) and issubclass(cls, errors.QLPError)):
                cls = errors.AdapterLoadError
            raise cls(f"compositor replica {ack.replica}: {ack.error}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "replica"


def board_dir(root: Path, app_name: str) -> Path:
    """The board of one Serve application under ``paths.root``."""
    return Path(root) / "serve" / "swaps" / _safe(app_name)


__all__ = [
    "ACK_SUFFIX",
    "NOTICE_SUFFIX",
    "Ack",
    "MemorySwapBoard",
    "Notice",
    "SwapBoard",
    "board_dir",
    "broadcast",
    "raise_first_error",
]
