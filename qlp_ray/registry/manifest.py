"""The signed manifest of one adapter version: what it is and the SHA-256 of every file.

The manifest binds adapter id, version, base model and domain to the exact bytes of
every file in the version directory, so a changed, added, removed or re-labelled
file is detected at load time. The signature (``manifest.sig``) covers the exact
bytes of ``manifest.json``, which the registry writes in canonical form.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.core.errors import InvalidRequest

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
METADATA_FILE = "qlp.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
REQUIRED_FILES = (WEIGHTS_FILE, ADAPTER_CONFIG_FILE)
# Files the signature itself lives in; they cannot be part of what is hashed.
UNHASHED_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(directory: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every regular file under ``directory``.

    The manifest and signature files at the top level are skipped. Symlinks and
    special files (fifos, sockets, devices) are refused with ``InvalidRequest``
    naming the entry: a symlink could point the loader at bytes nobody hashed.
    """
    root = Path(directory)
    if not root.is_dir() or root.is_symlink():
        raise InvalidRequest(f"not a directory: {root}")
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InvalidRequest(f"refusing symlink {rel!r} in adapter directory")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InvalidRequest(f"refusing non-regular file {rel!r} in adapter directory")
            if rel in UNHASHED_FILES:
                continue
            out[rel] = sha256_file(path)
    return dict(sorted(out.items()))


class Manifest(BaseModel):
    """What the signature vouches for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = Field(MANIFEST_FORMAT, description="Manifest schema version.")
    adapter_id: str = Field(description="Registry id of the adapter.")
    version: int = Field(ge=1, description="Version number within the adapter id.")
    base_model: str = Field(description="Base model the adapter was trained on.")
    domain: str = Field(description="Skill domain of the adapter.")
    files: dict[str, str] = Field(description="Relative path -> SHA-256 of every file.")
    created_at: str = Field(description="UTC creation time, ISO 8601.")
    key_id: str = Field(description="Id of the Ed25519 key that signed this manifest.")

    def canonical_bytes(self) -> bytes:
        """Deterministic JSON (sorted keys, no whitespace): the bytes that get signed."""
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse ``manifest.json`` bytes (raises ``ValueError`` when malformed)."""
        return cls.model_validate_json(data)


def canonical_json(obj: object) -> bytes:
    """Sorted-key, whitespace-free UTF-8 JSON; NaN/inf are refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def diff_files(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Human-readable differences between a manifest's files and what is on disk."""
    problems = [f"file {name!r} is missing" for name in sorted(expected.keys() - actual.keys())]
    problems += [f"file {name!r} was added" for name in sorted(actual.keys() - expected.keys())]
    problems += [
        f"file {name!r} was changed (sha256 differs)"
        for name in sorted(expected.keys() & actual.keys())
        if expected[name] != actual[name]
    ]
    return problems


__all__ = [
    "ADAPTER_CONFIG_FILE",
    "MANIFEST_FILE",
    "METADATA_FILE",
    "REQUIRED_FILES",
    "SIGNATURE_FILE",
    "UNHASHED_FILES",
    "WEIGHTS_FILE",
    "Manifest",
    "canonical_json",
    "diff_files",
    "hash_files",
    "sha256_file",
]
