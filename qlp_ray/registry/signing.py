"""Ed25519 keys and manifest signatures (``cryptography``).

Keys live in ``<home>/keys``: ``signing_key.pem`` (PKCS#8, mode 0600) and
``signing_key.pub.pem``. A key's id is the first 16 hex digits of the SHA-256 of
its raw 32-byte public key. ``manifest.sig`` is a small JSON document
``{"algorithm": "ed25519", "key_id": ..., "signature": <base64>}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import ConfigError, InvalidRequest, KeyMissing, SignatureError

logger = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "signing_key.pem"
PUBLIC_KEY_FILE = "signing_key.pub.pem"
TRUSTED_DIR = "trusted"  # <keys>/trusted/<key id>.pub.pem: retired keys still trusted
ALGORITHM = "ed25519"


class UnsignedAdapter(SignatureError):
    """The adapter carries no signature at all (may load when signatures are optional)."""


@dataclass(frozen=True)
class KeyInfo:
    """Where a key pair lives and its id."""

    key_id: str
    private_key_path: Path
    public_key_path: Path


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key and its id."""

    key_id: str
    private_key: Ed25519PrivateKey


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask or a stale tmp file must not widen the mode
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def init_keys(keys_dir: Path, force: bool = False) -> KeyInfo:
    """Create a new Ed25519 key pair in ``keys_dir``; refuses to overwrite unless ``force``."""
    keys_dir = Path(keys_dir)
    private_path, public_path = keys_dir / PRIVATE_KEY_FILE, keys_dir / PUBLIC_KEY_FILE
    if (private_path.exists() or public_path.exists()) and not force:
        raise InvalidRequest(
            f"a signing key already exists in {keys_dir}; use --force to replace it "
            "(adapters signed with the old key will no longer verify unless it stays trusted)"
        )
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomic(private_path, private_pem, 0o600)
    _write_atomic(public_path, public_pem, 0o644)
    key_id = key_id_of(private_key.public_key())
    logger.info("created Ed25519 signing key %s in %s", key_id, keys_dir)
    return KeyInfo(key_id, private_path, public_path)


def key_info(keys_dir: Path) -> KeyInfo:
    """Id and paths of the key pair in ``keys_dir`` (``KeyMissing`` if there is none)."""
    key = load_signing_key(keys_dir)
    return KeyInfo(key.key_id, Path(keys_dir) / PRIVATE_KEY_FILE, Path(keys_dir) / PUBLIC_KEY_FILE)


def load_signing_key(keys_dir: Path) -> SigningKey:
    """The private key of ``keys_dir``; ``KeyMissing`` with a hint when absent."""
    path = Path(keys_dir) / PRIVATE_KEY_FILE
    if not path.is_file():
        raise KeyMissing(f"no signing key at {path}; run `qlp keys init` to create one")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path} is not a readable PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an Ed25519 key")
    return SigningKey(key_id_of(key.public_key()), key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file, with errors naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"trusted key file not found: {path}")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"trusted key {path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted key {path} is not an Ed25519 public key")
    return key


def _unsafe(path: Path) -> str | None:
    """Why a key file (or its directory) must not be trusted: another owner, or writable
    by group or others (anyone who can write there could add a key)."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {st.st_mode & 0o777:o})"
    return None


def retired_key_files(keys_dir: Path) -> list[tuple[Path, Ed25519PublicKey]]:
    """The retired keys ``qlp keys rotate`` kept in ``<keys>/trusted/``, with their keys.

    Only files as rotation writes them are trusted: named ``<key id>.pub.pem`` after the
    key they hold, owned by this user and not writable by group or others, in a
    directory likewise. Any other file there is ignored with a warning, so a key dropped
    into the directory does not make its adapters load."""
    retired = Path(keys_dir) / TRUSTED_DIR
    if not retired.is_dir():
        return []
    problem = _unsafe(retired)
    if problem:
        logger.warning("ignoring every retired key in %s: %s", retired, problem)
        return []
    out = []
    for path in sorted(retired.glob("*.pem")):
        key = load_public_key(path)
        problem = _unsafe(path)
        if problem is None and path.name != f"{key_id_of(key)}.pub.pem":
            problem = f"{path.name} is not named after its key ({key_id_of(key)}.pub.pem)"
        if problem:
            logger.warning("not trusting %s: %s", path, problem)
            continue
        out.append((path, key))
    return out


def trusted_public_keys(cfg: QLPConfig) -> dict[str, Ed25519PublicKey]:
    """Own public key (when it exists), retired keys kept in ``<keys>/trusted/`` (see
    ``qlp keys rotate`` and :func:`retired_key_files`) and every ``registry.trusted_keys``
    file, by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    own = cfg.paths.keys / PUBLIC_KEY_FILE
    if own.is_file():
        key = load_public_key(own)
        keys[key_id_of(key)] = key
    for _, key in retired_key_files(cfg.paths.keys):
        keys[key_id_of(key)] = key
    for path in cfg.registry.trusted_keys:
        key = load_public_key(path)
        keys[key_id_of(key)] = key
    return keys


def sign_bytes(data: bytes, key: SigningKey) -> bytes:
    """The ``manifest.sig`` document for ``data``."""
    signature = key.private_key.sign(data)
    doc = {
        "algorithm": ALGORITHM,
        "key_id": key.key_id,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(doc, sort_keys=True, indent=1).encode("utf-8") + b"\n"


def verify_bytes(data: bytes, signature_doc: bytes, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check ``signature_doc`` over ``data``; the signing key id, or ``SignatureError``."""
    try:
        doc = json.loads(signature_doc)
        algorithm, key_id = doc["algorithm"], doc["key_id"]
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SignatureError(f"malformed signature file: {exc}") from exc
    if algorithm != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {algorithm!r}")
    public_key = trusted.get(key_id)
    if public_key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise SignatureError(f"signed by untrusted key {key_id!r} (trusted keys: {known})")
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(
            f"bad signature: manifest does not match its signature by key {key_id!r}"
        ) from None
    return key_id


__all__ = [
    "KeyInfo",
    "SigningKey",
    "UnsignedAdapter",
    "init_keys",
    "key_id_of",
    "key_info",
    "load_public_key",
    "load_signing_key",
    "sign_bytes",
    "trusted_public_keys",
    "verify_bytes",
]
