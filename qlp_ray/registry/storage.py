"""Where adapter versions live. The registry talks to storage only through this protocol.

A version is a directory of files. ``publish`` must be atomic: readers see either
the whole version or none of it (the local store renames a staging directory; the
S3 store uploads files first and the version marker last).

Two small pieces of state sit beside the versions: a *retired* flag per adapter (no
version is served; a new promotion clears it) and a store-wide *generation* marker that
the registry changes on every register/promote/retire, so servers can notice a change
with one cheap read instead of re-listing the store.
"""

from __future__ import annotations

import abc
from pathlib import Path


class AdapterStorage(abc.ABC):
    """Backend-neutral store of versioned adapter directories."""

    @abc.abstractmethod
    def adapter_ids(self) -> list[str]:
        """Ids that have at least one published version, sorted."""

    @abc.abstractmethod
    def versions(self, adapter_id: str) -> list[int]:
        """Published versions of ``adapter_id``, ascending (empty if unknown)."""

    @abc.abstractmethod
    def publish(self, staging_dir: Path, adapter_id: str, version: int) -> None:
        """Make the files of ``staging_dir`` visible as that version, atomically."""

    @abc.abstractmethod
    def fetch(self, adapter_id: str, version: int) -> Path:
        """A local directory holding that version's files (downloaded first if remote)."""

    @abc.abstractmethod
    def read_pointer(self, adapter_id: str) -> int | None:
        """The version marked current, or ``None``."""

    @abc.abstractmethod
    def write_pointer(self, adapter_id: str, version: int) -> None:
        """Mark ``version`` current (atomic replace)."""

    # -- optional: stores without them rely on periodic re-listing ------------------------
    def read_generation(self) -> str | None:
        """An opaque marker that changes on every registry change (``None``: not kept)."""
        return None

    def bump_generation(self) -> None:  # noqa: B027 - optional, deliberately a no-op
        """Change the generation marker (a no-op for stores that keep none)."""

    def is_retired(self, adapter_id: str) -> bool:
        """Whether ``adapter_id`` is retired (no version is served)."""
        return False

    def set_retired(self, adapter_id: str, retired: bool) -> None:
        """Set or clear the retired flag of ``adapter_id``."""
        raise NotImplementedError(f"{type(self).__name__} cannot retire adapters")
