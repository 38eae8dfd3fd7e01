"""Audit log of registry security events and version-rollback protection.

Every sign, verify (passed or refused), promote, rollback and key rotation is an
``events`` row in the feedback store, with its numbers (key id, versions, problem).

Rollback protection: the audit log is the trust anchor for *which version is
current*. The registry's pointer may only name a version at least as new as the
one set by the latest promote/rollback event; an older signed version (e.g. a
vulnerable release whose pointer someone restored in the storage) is refused
unless it was made current through an explicit, audited rollback.

Rolled-back versions: an explicit rollback (``Registry.rollback``: the CLI, the admin
route, the improve loop) lists the versions it takes out of service in its event
(``withdrawn``). A pinned ``adapter@N`` request for one of them is refused (410) until a
later promote makes that version current again. A plain ``set_current`` to an older
version (e.g. staging a hot-swap) withdraws nothing.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
from typing import TYPE_CHECKING, Any

from qlp_ray.core.errors import SignatureError, VersionRolledBack
from qlp_ray.store.database import FeedbackStore, resolve_store_url

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig
    from qlp_ray.store.records import EventRecord

logger = logging.getLogger(__name__)

POINTER_EVENTS = ("promote", "rollback")


class RollbackRefused(SignatureError):
    """The current pointer names an older version than the audit log allows."""

    code = "adapter_rollback_refused"


def _actor() -> str:
    try:
        return f"{getpass.getuser()}@{os.uname().nodename}"
    except (OSError, KeyError):
        return f"pid-{os.getpid()}"


class RegistryAudit:
    """What the registry calls: ``record`` events and ``check_current`` pointers."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    def record(self, kind: str, adapter_id: str | None, version: int | None, **payload: Any):
        """Append one audit event (``sign``, ``verify``, ``promote``, ``rollback``, ...)."""
        return self.store.record_event(
            kind, adapter_id=adapter_id, version=version, actor=_actor(), payload=payload or None
        )

    def last_pointer_event(self, adapter_id: str) -> EventRecord | None:
        events = self.store.query_events(kinds=POINTER_EVENTS, adapter_id=adapter_id)
        return events[-1] if events else None

    def check_current(self, adapter_id: str, version: int) -> None:
        """Refuse a current pointer older than the latest audited promote/rollback."""
        last = self.last_pointer_event(adapter_id)
        if last is None or last.version is None or version >= last.version:
            return
        self.record("verify", adapter_id, version, ok=False, problem="rollback refused",
                    audited_current=last.version)  # fmt: skip
        raise RollbackRefused(
            f"adapter {adapter_id!r}: the current pointer names v{version}, but the audit log "
            f"says v{last.version} was made current ({last.kind} event {last.id}); an older "
            f"version is accepted only through an explicit rollback "
            f"(`qlp improve rollback {adapter_id} {version}`)"
        )

    def check_pinned(self, adapter_id: str, version: int) -> None:
        """Refuse a version an explicit rollback withdrew, unless a later pointer event
        made it current again (an admin re-promoting it)."""
        withdrawn: dict[int, EventRecord] = {}
        for event in self.store.query_events(kinds=POINTER_EVENTS, adapter_id=adapter_id):
            for v in (event.payload or {}).get("withdrawn") or ():
                withdrawn[int(v)] = event
            withdrawn.pop(event.version, None)  # made current again
        event = withdrawn.get(version)
        if event is None:
            return
        reason = (event.payload or {}).get("reason") or "no reason given"
        raise VersionRolledBack(
            f"adapter {adapter_id!r} v{version} was rolled back (to v{event.version}, rollback "
            f"event {event.id}: {reason}); pinned requests for it are refused. An admin "
            f"re-enables it by promoting it again: `qlp improve promote {adapter_id} {version}` "
            f"or POST /v1/admin/adapters/{adapter_id}/promote",
            param="model",
        )

    def events(self, adapter_id: str | None = None, kinds: tuple[str, ...] | None = None):
        return self.store.query_events(kinds=kinds, adapter_id=adapter_id)


@functools.lru_cache(maxsize=8)
def _store_for(url: str, synchronous: str, busy_timeout_ms: int) -> FeedbackStore:

    return FeedbackStore(url, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)


def audit_for(cfg: QLPConfig) -> RegistryAudit | None:
    """The audit log of this config's feedback store (``None`` when ``store.audit`` is off)."""
    if not cfg.store.audit:
        return None

    store = _store_for(
        resolve_store_url(cfg), cfg.store.sqlite_synchronous, cfg.store.busy_timeout_ms
    )
    return RegistryAudit(store)
