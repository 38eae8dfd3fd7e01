"""Signing-key rotation and the trusted-key list.

``rotate_keys`` makes a fresh Ed25519 pair the signing key and keeps the old public
key in ``<keys>/trusted/<id>.pub.pem``, so versions it signed still verify. Dropping
trust is a separate, explicit ``revoke_key``; everything the revoked key signed is
refused at load from then on (``AdapterRevoked``: the id goes to ``<keys>/revoked_keys.txt``
so a refusal names the revocation, and serving replicas evict what they had loaded).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from qlp_ray.core.errors import InvalidRequest, KeyMissing, NotFound
from qlp_ray.registry.signing import (
    PUBLIC_KEY_FILE,
    TRUSTED_DIR,
    init_keys,
    key_id_of,
    key_info,
    load_public_key,
    retired_key_files,
)

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig
    from qlp_ray.registry.audit import RegistryAudit

logger = logging.getLogger(__name__)


REVOKED_FILE = "revoked_keys.txt"  # ids of revoked keys, one a line (names refusals)


def revoked_key_ids(keys_dir: Path) -> set[str]:
    """Ids of the keys ``revoke_key`` dropped (so a refusal can say "revoked")."""
    path = Path(keys_dir) / REVOKED_FILE
    if not path.is_file():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    role: Literal["signing", "retired", "configured"]
    path: Path


def trusted_keys(cfg: QLPConfig) -> list[TrustedKey]:
    """Every public key verification trusts, with where it comes from."""
    out = []
    own = cfg.paths.keys / PUBLIC_KEY_FILE
    if own.is_file():
        out.append(TrustedKey(key_id_of(load_public_key(own)), "signing", own))
    for path, key in retired_key_files(cfg.paths.keys):
        out.append(TrustedKey(key_id_of(key), "retired", path))
    for path in cfg.registry.trusted_keys:
        out.append(TrustedKey(key_id_of(load_public_key(path)), "configured", Path(path)))
    return out


def rotate_keys(cfg: QLPConfig, audit: RegistryAudit | None = None) -> tuple[str, str]:
    """New signing key; the old public key stays trusted. Returns ``(old_id, new_id)``."""
    keys_dir = cfg.paths.keys
    old = key_info(keys_dir)  # KeyMissing if there is nothing to rotate
    retired = keys_dir / TRUSTED_DIR
    retired.mkdir(mode=0o700, parents=True, exist_ok=True)
    retired.chmod(0o700)  # only this user may add trusted keys (see retired_key_files)
    kept = retired / f"{old.key_id}.pub.pem"
    shutil.copyfile(old.public_key_path, kept)  # before the old pair is replaced
    kept.chmod(0o644)
    new = init_keys(keys_dir, force=True)
    logger.info("rotated signing key %s -> %s (old key kept trusted)", old.key_id, new.key_id)
    if audit is not None:
        audit.record("key_rotate", None, None, old_key_id=old.key_id, new_key_id=new.key_id)
    return old.key_id, new.key_id


def revoke_key(cfg: QLPConfig, key_id: str, audit: RegistryAudit | None = None) -> Path:
    """Stop trusting a retired key (adapters it signed are refused from now on)."""
    try:
        current = key_info(cfg.paths.keys).key_id
    except KeyMissing:  # no signing key: only configured keys could match (refused below)
        current = None
    if key_id == current:
        raise InvalidRequest(f"key {key_id} is the current signing key; rotate first")
    for tk in trusted_keys(cfg):
        if tk.key_id != key_id:
            continue
        if tk.role == "configured":
            raise InvalidRequest(
                f"key {key_id} is trusted through `registry.trusted_keys` ({tk.path}); "
                "remove it from the config instead"
            )
        tk.path.unlink()
        with (cfg.paths.keys / REVOKED_FILE).open("a") as out:
            out.write(f"{key_id}\n")
        if audit is not None:
            audit.record("key_rotate", None, None, revoked_key_id=key_id)
        return tk.path
    raise NotFound(f"no trusted key {key_id!r}")
