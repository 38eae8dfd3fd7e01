"""Leases in the store: one holder of a named piece of work at a time, across processes and
hosts (e.g. one improve round per domain, whatever runs ``qlp improve``).

A lease is a row (name, owner, since, expiry). Taking it is one transaction that locks the
name: an advisory lock on it plus ``SELECT ... FOR UPDATE`` on PostgreSQL (the advisory
lock also covers the first taker, when no row exists yet), ``BEGIN IMMEDIATE`` (the
database's write lock) on SQLite. A held, unexpired lease refuses others with
:class:`LeaseHeld` naming the holder; an expired one is taken over and the takeover is an
audit event (``lease_takeover``). :class:`HeldLease` renews it every third of its TTL
while the work runs; a holder whose lease was taken over finds out at its next
:meth:`HeldLease.check`. Expiry compares wall clocks: hosts sharing a store need
synchronised clocks (NTP).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, text, update

from qlp_ray.core.errors import Conflict
from qlp_ray.store import schema

if TYPE_CHECKING:
    from qlp_ray.store.database import FeedbackStore

logger = logging.getLogger(__name__)
TAKEOVER_EVENT = "lease_takeover"


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    owner: str
    acquired_at: float
    renewed_at: float
    expires_at: float


class LeaseHeld(Conflict):
    """Someone else holds the lease and it has not expired."""

    code = "lease_held"

    def __init__(self, message: str, holder: LeaseInfo) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(Conflict):
    """The lease expired while its work ran and another owner took it over."""

    code = "lease_lost"


class Leases:
    """Acquire, renew and release named leases in ``store``."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        """A transaction in which the lease rows are this connection's alone."""
        engine = self.store.engine
        if engine.dialect.name != "sqlite":
            with engine.begin() as conn:
                yield conn
            return
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")  # we say BEGIN
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, before reading
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")

    def get(self, name: str) -> LeaseInfo | None:
        t = schema.leases
        with self.store.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.name == name)).first()
        return None if row is None else LeaseInfo(**row._mapping)

    def acquire(self, name: str, owner: str, ttl_s: float, *, what: str = "") -> LeaseInfo:
        """Take ``name`` for ``ttl_s`` seconds (also when ``owner`` holds it already, or its
        holder's lease expired: a takeover, audited). ``LeaseHeld`` otherwise; ``what``
        names the work in its message."""
        t = schema.leases
        now = time.time()
        mine = LeaseInfo(name, owner, now, now, now + ttl_s)
        with self._locked() as conn:
            q = select(t).where(t.c.name == name)
            if conn.dialect.name == "postgresql":
                # FOR UPDATE locks no row before the first lease exists: two first takers
                # would both INSERT (unique violation). A transaction-level advisory lock
                # on the name serialises them, the first insert included.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:n))"),
                             {"n": f"qlp-lease:{name}"})  # fmt: skip
                q = q.with_for_update()
            row = conn.execute(q).first()
            held = None if row is None else LeaseInfo(**row._mapping)
            if held is None:
                conn.execute(t.insert().values(**asdict(mine)))
            else:
                if held.owner != owner and held.expires_at > now:
                    raise LeaseHeld(
                        f"{what or name} is being run by {held.owner} since "
                        f"{utc(held.acquired_at)}; expires at {utc(held.expires_at)}",
                        held,
                    )
                if held.owner == owner:  # re-entry keeps its start
                    mine = LeaseInfo(name, owner, held.acquired_at, now, now + ttl_s)
                conn.execute(update(t).where(t.c.name == name).values(**asdict(mine)))
        if held is not None and held.owner != owner:
            logger.warning("lease %s: %s takes over from %s (expired %s)", name, owner,
                           held.owner, utc(held.expires_at))  # fmt: skip
            self.store.record_event(
                TAKEOVER_EVENT, actor=owner, adapter_id=name.split(":", 1)[-1],
                payload={"lease": name, "previous_owner": held.owner,
                         "previous_since": held.acquired_at, "expired_at": held.expires_at,
                         "ttl_s": ttl_s},
            )  # fmt: skip
        return mine

    def renew(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend ``owner``'s lease; False when it is no longer theirs."""
        t = schema.leases
        now = time.time()
        with self.store.engine.begin() as conn:
            done = conn.execute(
                update(t).where(t.c.name == name, t.c.owner == owner)
                .values(renewed_at=now, expires_at=now + ttl_s)
            )  # fmt: skip
        return done.rowcount == 1

    def release(self, name: str, owner: str) -> bool:
        """Give the lease up (only its owner can); True if it was theirs."""
        t = schema.leases
        with self.store.engine.begin() as conn:
            done = conn.execute(delete(t).where(t.c.name == name, t.c.owner == owner))
        return done.rowcount == 1

    def hold(self, name: str, owner: str, ttl_s: float, *, what: str = "") -> HeldLease:
        """Acquire ``name`` and keep it renewed until the returned context exits."""
        info = self.acquire(name, owner, ttl_s, what=what)
        return HeldLease(self, info, ttl_s, what or name)


class HeldLease:
    """An acquired lease renewed by a daemon thread every ``ttl_s / 3``; released on exit."""

    def __init__(self, leases: Leases, info: LeaseInfo, ttl_s: float, what: str) -> None:
        self.leases, self.info, self.ttl_s, self.what = leases, info, ttl_s, what
        self.lost_to: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"lease-{info.name}")  # fmt: skip
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.leases.renew(self.info.name, self.info.owner, self.ttl_s):
                    self.lost_to = self.leases.get(self.info.name) or self.info
                    logger.error("lease %s was taken over: %s", self.info.name, self.lost_to)
                    return
            except Exception:  # a store hiccup: the next renewal tries again
                logger.exception("renewing lease %s failed", self.info.name)

    def check(self) -> None:
        """``LeaseLost`` when another owner took the lease over: stop before acting."""
        now = self.leases.get(self.info.name)
        if self.lost_to is None and (now is None or now.owner != self.info.owner):
            self.lost_to = now or self.info
        if self.lost_to is not None:
            raise LeaseLost(
                f"{self.what}: this orchestrator ({self.info.owner}) lost its lease to "
                f"{self.lost_to.owner} (since {utc(self.lost_to.acquired_at)}); stopping "
                "before it changes anything"
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.lost_to is None:
            self.leases.release(self.info.name, self.info.owner)

    def __enter__(self) -> HeldLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
