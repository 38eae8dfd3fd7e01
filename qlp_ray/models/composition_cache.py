"""LRU + TTL cache of composed adapter stacks, with hit/miss/eviction counters (no Ray).

Entries expire ``ttl_s`` after they were composed (so a stack is re-verified and
re-composed at least that often) and the least recently used entry goes when the
cache is full. Every entry that leaves — evicted, expired or invalidated — is handed
to ``on_remove`` outside the lock, which frees the composed adapter in the backend.
The clock is injectable so tests can move time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    created: float
    last_used: float
    hits: int = 0


class CompositionCache(Generic[V]):
    """Thread-safe LRU cache with a time-to-live per entry."""

    def __init__(
        self,
        capacity: int,
        ttl_s: float,
        *,
        on_remove: Callable[[str, V, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._on_remove = on_remove
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self.hits = self.misses = self.evictions = self.expirations = self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is cached and fresh (does not count as a hit or a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and not self._expired(entry)

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _expired(self, entry: _Entry[V]) -> bool:
        return self._clock() - entry.created >= self.ttl_s

    def _notify(self, removed: list[tuple[str, V, str]]) -> None:
        for key, value, reason in removed:
            logger.info("composition cache: %s %s", reason, key)
            if self._on_remove is not None:
                self._on_remove(key, value, reason)

    def get(self, key: str) -> V | None:
        """The fresh value of ``key`` (a hit, now most recently used) or ``None`` (a miss)."""
        removed: list[tuple[str, V, str]] = []
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._expired(entry):
                del self._entries[key]
                self.expirations += 1
                removed.append((key, entry.value, "expired"))
                entry = None
            if entry is None:
                self.misses += 1
                value = None
            else:
                self.hits += 1
                entry.hits += 1
                entry.last_used = self._clock()
                self._entries.move_to_end(key)
                value = entry.value
        self._notify(removed)
        return value

    def put(self, key: str, value: V) -> None:
        """Insert (or replace) ``key``; evicts expired entries, then the LRU ones if full."""
        now = self._clock()
        removed: list[tuple[str, V, str]] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None and old.value is not value:
                removed.append((key, old.value, "replaced"))
            for k in [k for k, e in self._entries.items() if self._expired(e)]:
                removed.append((k, self._entries.pop(k).value, "expired"))
                self.expirations += 1
            while len(self._entries) >= self.capacity:
                k, e = self._entries.popitem(last=False)
                removed.append((k, e.value, "evicted"))
                self.evictions += 1
            self._entries[key] = _Entry(value, now, now)
        self._notify(removed)

    def invalidate(self, predicate: Callable[[str], bool]) -> list[str]:
        """Drop every entry whose key satisfies ``predicate``; returns the dropped keys."""
        removed: list[tuple[str, V, str]] = []
        with self._lock:
            for k in [k for k in self._entries if predicate(k)]:
                removed.append((k, self._entries.pop(k).value, "invalidated"))
                self.invalidations += 1
        self._notify(removed)
        return [k for k, _, _ in removed]

    def clear(self) -> list[str]:
        """Drop every entry (counted as invalidations)."""
        return self.invalidate(lambda _k: True)

    def stats(self) -> dict[str, object]:
        """Counters, hit ratio and the entries (key, age, idle time, hits), LRU first."""
        with self._lock:
            now = self._clock()
            lookups = self.hits + self.misses
            return {
                "size": len(self._entries),
                "capacity": self.capacity,
                "ttl_s": self.ttl_s,
                "hits": self.hits,
                "misses": self.misses,
                "hit_ratio": round(self.hits / lookups, 4) if lookups else None,
                "evictions": self.evictions,
                "expirations": self.expirations,
                "invalidations": self.invalidations,
                "entries": [
                    {
                        "key": k,
                        "age_s": round(now - e.created, 3),
                        "idle_s": round(now - e.last_used, 3),
                        "hits": e.hits,
                    }
                    for k, e in self._entries.items()
                ],
            }


__all__ = ["CompositionCache"]
