"""API keys with roles, kept hashed at rest in ``<home>/keys/api_keys.json``.

A key is ``qlp-<key id>-<secret>``: 256 random bits, so SHA-256 of the whole key is what
the file stores (a slow hash such as scrypt protects guessable passwords, not random
keys). Roles: ``user`` (inference, feedback), ``trainer`` (fine-tuning jobs, datasets,
files, evaluations, optimizations), ``reviewer`` (accept/reject corrections) and
``admin`` (everything). The file is written with mode 0600 and refused when group- or
world-writable. ``qlp keys api create|list|revoke`` manage it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlp_ray.core.errors import ConfigError, NotFound

logger = logging.getLogger(__name__)

ROLES = ("user", "trainer", "reviewer", "admin")
# What each role may do: admin implies every role, trainer and reviewer imply user.
GRANTS: dict[str, frozenset[str]] = {
    "user": frozenset({"user"}),
    "trainer": frozenset({"user", "trainer"}),
    "reviewer": frozenset({"user", "reviewer"}),
    "admin": frozenset(ROLES),
}
KEY_FILE = "api_keys.json"


def key_file(keys_dir: Path) -> Path:
    return keys_dir / KEY_FILE


def hash_key(key: str | bytes) -> str:
    raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One stored key: never the key itself, only its SHA-256."""

    key_id: str
    role: str
    sha256: str
    name: str = ""
    created_at: float = 0.0
    revoked_at: float | None = None

    @property
    def grants(self) -> frozenset[str]:
        return GRANTS[self.role]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "role": self.role,
            "sha256": self.sha256,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"unknown API key role {role!r}; roles: {', '.join(ROLES)}")
    return role


def load_keys(path: Path) -> list[ApiKey]:
    """Every key in ``path`` (none if it does not exist); refuses a writable-by-others file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path} is group/world-writable: fix with `chmod 600 {path}`")
    try:
        rows = json.loads(path.read_text())["keys"]
        return [
            ApiKey(**{**r, "role": _check_role(r["role"])})  # type: ignore[arg-type]
            for r in rows
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid API key file: {exc}") from exc


def _save(path: Path, keys: list[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": [k.to_dict() for k in keys]}, fh, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def create_key(path: Path, role: str, name: str = "") -> tuple[str, ApiKey]:
    """A new key of ``role``: returns the key (shown once) and its stored record."""
    _check_role(role)
    key_id = "ak" + secrets.token_hex(4)
    key = f"qlp-{key_id}-{secrets.token_urlsafe(32)}"
    rec = ApiKey(key_id, role, hash_key(key), name[:64], time.time())
    _save(path, [*load_keys(path), rec])
    return key, rec


def revoke_key(path: Path, key_id: str) -> ApiKey:
    """Mark ``key_id`` revoked (kept for the audit trail); a revoked key never matches."""
    keys = load_keys(path)
    for i, k in enumerate(keys):
        if k.key_id == key_id:
            if k.revoked_at is None:
                keys[i] = ApiKey(**{**k.to_dict(), "revoked_at": time.time()})
                _save(path, keys)
            return keys[i]
    raise NotFound(f"no API key {key_id!r} in {path}")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's id (None: no key) and what its role grants."""

    key_id: str | None
    roles: frozenset[str] = field(default_factory=frozenset)


@dataclass
class KeyRing:
    """The keys a gateway accepts: the key file (re-read when it changes) plus the config's
    ``serve.api_key`` (role user, id ``cfg-user``) and ``serve.admin_key`` (``cfg-admin``)."""

    path: Path
    api_key: str | None = None
    admin_key: str | None = None
    _stamp: tuple[int, int, int] | None = None
    _keys: list[ApiKey] = field(default_factory=list)
    _error: str | None = None

    def _refresh(self) -> list[ApiKey]:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                self._keys, self._error = load_keys(self.path), None
            except ConfigError as exc:  # fail closed: no file key matches
                logger.error("API key file refused: %s", exc)
                self._keys, self._error = [], str(exc)
            self._stamp = stamp
        return [k for k in self._keys if k.revoked_at is None]

    def match(self, token: bytes) -> Caller | None:
        """The caller a bearer token identifies, or None."""
        digest = hash_key(token)
        found = None
        for k in self._refresh():
            if hmac.compare_digest(digest, k.sha256):
                found = Caller(k.key_id, k.grants)
        for key_id, key, role in (
            ("cfg-user", self.api_key, "user"),
            ("cfg-admin", self.admin_key, "admin"),
        ):
            if key and hmac.compare_digest(token, key.encode()):
                found = Caller(key_id, GRANTS[role])
        return found

    def has_role(self, role: str) -> bool:
        """Whether some active key grants ``role``."""
        if self.admin_key or any(role in k.grants for k in self._refresh()):
            return True
        return role == "user" and bool(self.api_key)

    def inference_closed(self) -> bool:
        """User routes need a key when ``serve.api_key`` is set or a ``user`` key exists."""
        return bool(self.api_key) or any(k.role == "user" for k in self._refresh())


__all__ = [
    "GRANTS",
    "ROLES",
    "ApiKey",
    "Caller",
    "KeyRing",
    "create_key",
    "hash_key",
    "key_file",
    "load_keys",
    "revoke_key",
]
