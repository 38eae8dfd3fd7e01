"""Where adapter versions live. The registry talks to storage only through this protocol.

A version is a directory of files. ``publish`` must be atomic: readers see either
the whole version or none of it (the local store renames a staging directory; the
S3 store uploads files first and the version marker last).
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
