"""Adapter storage on a local (or mounted) file system.

Layout::

    <root>/<adapter_id>/v<N>/...files...
    <root>/<adapter_id>/CURRENT          # text: the current version number
    <root>/<adapter_id>/RETIRED          # present: the adapter is retired
    <root>/.generation                   # "<counter> <token>", replaced on every change
    <root>/.staging/                     # copies in flight; never read

``publish`` copies into ``.staging`` and renames the finished directory into place,
so readers see a whole version or nothing. The pointer is written to a temporary
file and ``os.replace``-d.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from qlp_ray.core.errors import AdapterNotFound, ConfigError, QLPError
from qlp_ray.registry.storage import AdapterStorage

logger = logging.getLogger(__name__)

POINTER_FILE = "CURRENT"
RETIRED_FILE = "RETIRED"
GENERATION_FILE = ".generation"
STAGING_DIR = ".staging"
ADAPTER_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")


class StorageError(QLPError, OSError):
    """The adapter store is in a state it cannot work with (conflict, corrupt pointer)."""

    code = "registry_storage_error"


class LocalStorage(AdapterStorage):
    """Versioned adapter directories under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _adapter_dir(self, adapter_id: str) -> Path:
        if not ADAPTER_ID_PATTERN.match(adapter_id):  # also keeps '..' and '/' out of paths
            raise AdapterNotFound(f"invalid adapter id {adapter_id!r}", param="adapter_id")
        return self.root / adapter_id

    def adapter_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if ADAPTER_ID_PATTERN.match(p.name) and p.is_dir() and self.versions(p.name)
        )

    def versions(self, adapter_id: str) -> list[int]:
        base = self._adapter_dir(adapter_id)
        if not base.is_dir():
            return []
        found = []
        for p in base.iterdir():
            m = _VERSION_DIR.match(p.name)
            if m and p.is_dir() and not p.is_symlink():
                found.append(int(m.group(1)))
        return sorted(found)

    def publish(self, staging_dir: Path, adapter_id: str, version: int) -> None:
        target = self._adapter_dir(adapter_id) / f"v{version}"
        if target.exists():
            raise StorageError(f"adapter {adapter_id!r} version {version} already exists")
        stage_root = self.root / STAGING_DIR
        stage_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{adapter_id}-v{version}-", dir=stage_root))
        try:
            copy = work / "files"
            shutil.copytree(staging_dir, copy, symlinks=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            # rename(2) is atomic; onto an existing non-empty directory it fails.
            os.rename(copy, target)
        except OSError as exc:
            raise StorageError(
                f"could not publish adapter {adapter_id!r} version {version}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _fsync_dir(target.parent)
        logger.debug("published %s v%d at %s", adapter_id, version, target)

    def fetch(self, adapter_id: str, version: int) -> Path:
        path = self._adapter_dir(adapter_id) / f"v{version}"
        if not path.is_dir() or path.is_symlink():
            raise AdapterNotFound(f"adapter {adapter_id!r} has no version {version} in {self}")
        return path

    def read_pointer(self, adapter_id: str) -> int | None:
        path = self._adapter_dir(adapter_id) / POINTER_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise StorageError(f"corrupt pointer {path}: expected a version number, got {text!r}")
        return int(text)

    def write_pointer(self, adapter_id: str, version: int) -> None:
        _replace_text(self._adapter_dir(adapter_id), POINTER_FILE, f"{version}\n")

    def read_generation(self) -> str | None:
        try:
            return (self.root / GENERATION_FILE).read_text()
        except FileNotFoundError:
            return None

    def bump_generation(self) -> None:
        previous = (self.read_generation() or "0").split(" ", 1)[0]
        counter = int(previous) + 1 if previous.isdigit() else 1
        # the token keeps two concurrent bumps from writing the same marker
        _replace_text(self.root, GENERATION_FILE, f"{counter} {uuid.uuid4().hex}")

    def is_retired(self, adapter_id: str) -> bool:
        return (self._adapter_dir(adapter_id) / RETIRED_FILE).is_file()

    def set_retired(self, adapter_id: str, retired: bool) -> None:
        base = self._adapter_dir(adapter_id)
        if retired:
            _replace_text(base, RETIRED_FILE, "retired\n")
        else:
            (base / RETIRED_FILE).unlink(missing_ok=True)
            _fsync_dir(base)


def _replace_text(directory: Path, name: str, text: str) -> None:
    """Write ``directory/name`` atomically (temporary file, fsync, ``os.replace``)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(uri: str) -> AdapterStorage:
    """The storage behind a registry URI: a local path (or ``file://`` URI)."""
    if not uri:
        raise ConfigError("empty registry URI; set `registry.uri` or leave it '' for <home>")
    if uri.startswith("s3://"):
        raise ConfigError(
            f"`registry.uri` {uri!r}: S3 storage is not available yet; use a local directory"
        )
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"`registry.uri` {uri!r}: unsupported scheme (use a local path)")
    return LocalStorage(uri.removeprefix("file://"))


__all__ = ["ADAPTER_ID_PATTERN", "LocalStorage", "StorageError", "open_storage"]
