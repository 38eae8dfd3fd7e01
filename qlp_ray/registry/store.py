"""The adapter registry: register, list, pick the current version, verify before load.

The registry talks to storage only through ``AdapterStorage``; signing and hashing
live in ``signing`` and ``manifest``. Nothing is handed to a loader before
``verify`` has checked the signature, the key, every file and the labels.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import AdapterNotFound, AdapterRevoked, InvalidRequest, SignatureError
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.keyring import revoked_key_ids
from qlp_ray.registry.local import ADAPTER_ID_PATTERN, open_storage
from qlp_ray.registry.manifest import (
    MANIFEST_FILE,
    METADATA_FILE,
    REQUIRED_FILES,
    SIGNATURE_FILE,
    Manifest,
    canonical_json,
    hash_files,
)
from qlp_ray.registry.s3 import open_s3_storage
from qlp_ray.registry.signing import (
    UnsignedAdapter,
    load_signing_key,
    sign_bytes,
    trusted_public_keys,
)
from qlp_ray.registry.storage import AdapterStorage
from qlp_ray.registry.verify import AdapterRecord, check_signed, check_unsigned, read_metadata

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
RESERVED_METADATA = ("adapter_id", "domain", "version", "base_model", "created_at")


def validate_adapter_id(adapter_id: str, what: str = "adapter id") -> str:
    """``adapter_id`` if it matches ``^[a-z0-9][a-z0-9_.-]{0,63}$``, else ``InvalidRequest``."""
    if not isinstance(adapter_id, str) or not ADAPTER_ID_PATTERN.match(adapter_id):
        raise InvalidRequest(
            f"invalid {what} {adapter_id!r}: use 1-64 characters from a-z 0-9 _ . -, "
            "starting with a letter or digit ('+' is reserved for adapter stacks)",
            param="adapter_id",
        )
    return adapter_id


def _check_source(src: Path) -> list[Path]:
    """The files to copy from ``src``; refuses pickles, links and missing weights."""
    if not src.is_dir():
        raise InvalidRequest(f"adapter source {src} is not a directory")
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise InvalidRequest(f"refusing {rel!r} in {src}: not a regular file")
        if path.is_dir():
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidRequest(
                f"refusing pickle file {rel!r} in {src}: only safetensors weights are accepted"
            )
        if rel in (MANIFEST_FILE, SIGNATURE_FILE, METADATA_FILE):
            continue  # the registry writes these itself
        files.append(path)
    missing = [name for name in REQUIRED_FILES if not (src / name).is_file()]
    if missing:
        raise InvalidRequest(f"adapter source {src} lacks {', '.join(missing)}")
    return files


def _check_metadata(metadata: dict[str, Any]) -> None:
    clash = [k for k in RESERVED_METADATA if k in metadata]
    if clash:
        raise InvalidRequest(f"metadata may not set {', '.join(clash)} (the registry sets them)")
    centroid = metadata.get("centroid")
    if centroid is not None and not (
        isinstance(centroid, list)
        and centroid
        and all(isinstance(x, int | float) and math.isfinite(x) for x in centroid)
    ):
        raise InvalidRequest("metadata 'centroid' must be a non-empty list of finite numbers")
    try:
        canonical_json(metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"metadata is not JSON-serialisable: {exc}") from exc


class Registry:
    """Signed, versioned adapters in the store named by ``cfg.registry_uri``."""

    def __init__(
        self, cfg: QLPConfig, storage: AdapterStorage | None = None, audit: Any = "config"
    ) -> None:
        self.cfg = cfg
        if storage is None and cfg.registry_uri.startswith("s3://"):
            storage = open_s3_storage(cfg.registry_uri, cfg)
        self.storage = storage if storage is not None else open_storage(cfg.registry_uri)
        if audit == "config":  # the audit log / rollback guard of the feedback store
            audit = audit_for(cfg)
        self.audit = audit
        # (adapter_id, version) -> (what the check saw, its record): a listing, or a
        # verification asked with ``reuse=True``, hashes a version again only when its
        # files, the trusted keys or the question changed
        self._listed: dict[tuple[str, int], tuple[Any, AdapterRecord]] = {}
        self._verified: dict[tuple[str, int], tuple[Any, AdapterRecord]] = {}

    # --- writing ------------------------------------------------------------------------
    def register(
        self,
        src_dir: Path | str,
        *,
        adapter_id: str,
        domain: str,
        base_model: str,
        metadata: dict[str, Any] | None = None,
        make_current: bool = True,
    ) -> AdapterRecord:
        """Copy ``src_dir`` in as the next signed version of ``adapter_id``; make it current
        unless ``make_current`` is false (a candidate waiting for its experiment)."""
        src = Path(src_dir)
        validate_adapter_id(adapter_id)
        validate_adapter_id(domain, "domain")
        if not isinstance(base_model, str) or not base_model.strip():
            raise InvalidRequest("base_model must be a non-empty string", param="base_model")
        metadata = dict(metadata or {})
        _check_metadata(metadata)
        files = _check_source(src)
        key = load_signing_key(self.cfg.paths.keys)  # fail before anything is written

        existing = self.storage.versions(adapter_id)
        version = existing[-1] + 1 if existing else 1
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        with tempfile.TemporaryDirectory(prefix="qlp-register-") as tmp:
            stage = Path(tmp) / "adapter"
            stage.mkdir()
            for path in files:
                dest = stage / path.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            info = {
                "adapter_id": adapter_id,
                "domain": domain,
                "version": version,
                "base_model": base_model,
                "created_at": created_at,
                **metadata,
            }
            (stage / METADATA_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
            manifest = Manifest(
                adapter_id=adapter_id,
                version=version,
                base_model=base_model,
                domain=domain,
                files=hash_files(stage),
                created_at=created_at,
                key_id=key.key_id,
            )
            manifest_bytes = manifest.canonical_bytes()
            (stage / MANIFEST_FILE).write_bytes(manifest_bytes)
            (stage / SIGNATURE_FILE).write_bytes(sign_bytes(manifest_bytes, key))
            self.storage.publish(stage, adapter_id, version)
        if self.audit is not None:
            self.audit.record("sign", adapter_id, version, key_id=key.key_id, domain=domain,
                              files=len(manifest.files), base_model=base_model)  # fmt: skip
        if make_current:
            self._point(adapter_id, version, "promote", reason="registered")
        else:
            self.storage.bump_generation()
        logger.info(
            "registered adapter %s v%d (domain %s, base %s, %d files, key %s)",
            adapter_id,
            version,
            domain,
            base_model,
            len(manifest.files),
            key.key_id,
        )
        return self.verify(adapter_id, version)

    def set_current(self, adapter_id: str, version: int, reason: str = "") -> None:
        """Point ``adapter_id``'s CURRENT at an existing ``version`` (audited: a newer one
        is a promotion, an older one an explicit rollback)."""
        self._require_version(adapter_id, version)
        current = self.storage.read_pointer(adapter_id)
        kind = "rollback" if current is not None and version < current else "promote"
        self._point(adapter_id, version, kind, reason=reason, previous=current)

    def rollback(
        self, adapter_id: str, version: int, reason: str = "", withdraw: Iterable[int] = ()
    ) -> None:
        """Explicitly make an older ``version`` current (recorded as a rollback). The version
        rolled back from, and ``withdraw`` (e.g. an experiment's losing candidate), are
        refused for pinned ``adapter@N`` requests until promoted again."""
        self._require_version(adapter_id, version)
        current = self.storage.read_pointer(adapter_id)
        extra = set(withdraw)
        for v in extra:
            self._require_version(adapter_id, v)
        if current is not None and current != version:
            extra.add(current)
        extra.discard(version)
        self._point(adapter_id, version, "rollback", reason=reason, previous=current,
                    withdrawn=sorted(extra))  # fmt: skip

    def retire(self, adapter_id: str, reason: str = "") -> int:
        """Stop serving ``adapter_id``: it leaves the listing and the routing table (its
        versions stay stored). Promoting or
        registering a version serves it again; pinned ``adapter@version`` ids are refused
        too). Returns the version that was current."""
        version = self._resolve(adapter_id, None)  # 404 when unknown or already retired
        if self.audit is not None:
            self.audit.record("retire", adapter_id, version, reason=reason)
        self.storage.set_retired(adapter_id, True)
        self.storage.bump_generation()
        logger.info("adapter %s retired (was serving v%d)", adapter_id, version)
        return version

    def generation(self) -> str | None:
        """The store's change marker: differs after every register/promote/retire."""
        return self.storage.read_generation()

    def _point(self, adapter_id: str, version: int, kind: str, **payload: Any) -> None:
        if self.audit is not None:  # the event first: a load never meets an unexplained pointer
            self.audit.record(kind, adapter_id, version, **payload)
        self.storage.write_pointer(adapter_id, version)
        if self.storage.is_retired(adapter_id):  # a promotion serves a retired adapter again
            self.storage.set_retired(adapter_id, False)
        self.storage.bump_generation()
        logger.info("adapter %s: current version is now v%d (%s)", adapter_id, version, kind)

    # --- reading ------------------------------------------------------------------------
    def list(self, all_versions: bool = False) -> list[AdapterRecord]:
        """The current version of each adapter not retired (or every version of every
        adapter), with honest ``signed``."""
        records = []
        trusted = trusted_public_keys(self.cfg)  # read once per listing, not per adapter
        for adapter_id in self.storage.adapter_ids():
            if all_versions:
                versions = self.storage.versions(adapter_id)
            elif self.storage.is_retired(adapter_id):
                continue
            else:
                versions = [self._current_version(adapter_id)]
            records.extend(self._inspect(adapter_id, v, trusted) for v in versions)
        return records

    def get(self, adapter_id: str, version: int | None = None) -> AdapterRecord:
        """One adapter version (default: current); ``AdapterNotFound`` names the known ids."""
        version = self._resolve(adapter_id, version)
        return self._inspect(adapter_id, version, trusted_public_keys(self.cfg))

    def servable(self, adapter_id: str, version: int | None = None) -> AdapterRecord:
        """The record of a version a request may be served, pinned (``adapter@N``) or not:
        the adapter is not retired, its current pointer passes rollback protection (a
        tampered pointer refuses the adapter's pinned versions too), no explicit rollback
        withdrew the version (410 until it is promoted again), and the version
        verifies with today's trusted keys (a revoked key's adapters are refused at the
        next request). From the listing's cache: no re-hashing unless the files or the
        trusted keys changed, and no audit row (unless a check fails)."""
        version = self._resolve(adapter_id, version)
        if self.storage.is_retired(adapter_id):
            raise AdapterNotFound(
                f"adapter {adapter_id!r} is retired; promote a version to serve it again",
                param="model",
            )
        if self.audit is not None:  # the audit log's pointer check, for the current version
            self.audit.check_current(adapter_id, self._current_version(adapter_id))
            self.audit.check_pinned(adapter_id, version)  # 410 for a rolled-back version
        record = self._inspect(adapter_id, version, trusted_public_keys(self.cfg))
        if not record.signed and self.cfg.registry.require_signature:
            raise refusal(record)
        return record

    def verify(
        self,
        adapter_id: str,
        version: int | None = None,
        *,
        expected_base_model: str | None = None,
        reuse: bool = False,
    ) -> AdapterRecord:
        """Check signature, key, files and labels; ``SignatureError`` names what is wrong.

        With ``registry.require_signature`` false an unsigned adapter passes with a
        warning (``signed=False``); a signed but tampered one is always refused.

        ``reuse``: a version that passed before with the same files (names, sizes, change
        times), trusted keys and question is not hashed or audited again (the router's
        table refreshes). Loading an adapter never reuses: it always hashes.
        """
        version = self._resolve(adapter_id, version)
        path = self.storage.fetch(adapter_id, version)
        trusted = trusted_public_keys(self.cfg)
        seen = (_files_stamp(path), tuple(sorted(trusted)), expected_base_model,
                self.cfg.registry.require_signature)  # fmt: skip
        if reuse:
            hit = self._verified.get((adapter_id, version))
            if hit is not None and hit[0] == seen:
                return hit[1]
        try:
            try:
                record = check_signed(adapter_id, version, path, trusted, expected_base_model)
            except UnsignedAdapter as exc:
                if self.cfg.registry.require_signature:
                    raise
                record = check_unsigned(adapter_id, version, path, expected_base_model)
                logger.warning("loading UNSIGNED adapter %s v%d: %s", adapter_id, version, exc)
        except SignatureError as exc:
            exc = self._named_revocation(adapter_id, version, path, exc)
            if self.audit is not None:
                self.audit.record("verify", adapter_id, version, ok=False, problem=str(exc))
            raise exc from None
        if self.audit is not None:
            key_id = _key_id(path) if record.signed else None
            self.audit.record("verify", adapter_id, version, ok=True, signed=record.signed,
                              key_id=key_id)  # fmt: skip
        self._verified[(adapter_id, version)] = (seen, record)
        return record

    def verified_path(
        self,
        adapter_id: str,
        version: int | None = None,
        *,
        expected_base_model: str | None = None,
    ) -> Path:
        """Verify, then return the directory to load the adapter from."""
        return self.verify(adapter_id, version, expected_base_model=expected_base_model).path

    # --- internals ----------------------------------------------------------------------
    def _current_version(self, adapter_id: str) -> int:
        pointer = self.storage.read_pointer(adapter_id)
        if pointer is not None:
            return pointer
        versions = self.storage.versions(adapter_id)
        if not versions:
            raise self._not_found(adapter_id)
        return versions[-1]

    def _resolve(self, adapter_id: str, version: int | None) -> int:
        if not isinstance(adapter_id, str) or not ADAPTER_ID_PATTERN.match(adapter_id):
            raise self._not_found(adapter_id)
        if not self.storage.versions(adapter_id):
            raise self._not_found(adapter_id)
        if version is None:
            if self.storage.is_retired(adapter_id):
                raise AdapterNotFound(
                    f"adapter {adapter_id!r} is retired; promote a version to serve it again",
                    param="adapter_id",
                )
            current = self._current_version(adapter_id)
            if self.audit is not None:
                self.audit.check_current(adapter_id, current)
            return current
        self._require_version(adapter_id, version)
        return version

    def _require_version(self, adapter_id: str, version: int) -> None:
        versions = self.storage.versions(adapter_id)
        if not versions:
            raise self._not_found(adapter_id)
        if version not in versions:
            raise AdapterNotFound(
                f"adapter {adapter_id!r} has no version {version} "
                f"(versions: {', '.join(map(str, versions))})",
                param="version",
            )

    def _not_found(self, adapter_id: str) -> AdapterNotFound:
        known = ", ".join(self.storage.adapter_ids()) or "none registered"
        return AdapterNotFound(
            f"unknown adapter {adapter_id!r} (known: {known})", param="adapter_id"
        )

    def _inspect(self, adapter_id: str, version: int, trusted: dict[str, Any]) -> AdapterRecord:
        """A record whose ``signed`` says whether the signature really verifies (hashed
        again only when the version's files or the trusted keys changed)."""
        path = self.storage.fetch(adapter_id, version)
        seen = (_files_stamp(path), tuple(sorted(trusted)))
        hit = self._listed.get((adapter_id, version))
        if hit is not None and hit[0] == seen:
            return hit[1]
        record = self._check_for_listing(adapter_id, version, path, trusted)
        self._listed[(adapter_id, version)] = (seen, record)
        return record

    def _check_for_listing(
        self, adapter_id: str, version: int, path: Path, trusted: dict[str, Any]
    ) -> AdapterRecord:
        try:
            return check_signed(adapter_id, version, path, trusted)
        except SignatureError as exc:
            exc = self._named_revocation(adapter_id, version, path, exc)
            try:
                info = read_metadata(path)
            except SignatureError:
                info = {}  # the problem is reported below; the listing must go on
            return AdapterRecord(
                adapter_id=adapter_id,
                domain=str(info.get("domain", "")),
                version=version,
                path=path,
                signed=False,
                base_model=str(info.get("base_model", "")),
                metadata=info,
                problem=str(exc),
                revoked=isinstance(exc, AdapterRevoked),
            )

    def _named_revocation(
        self, adapter_id: str, version: int, path: Path, exc: SignatureError
    ) -> SignatureError:
        """``AdapterRevoked`` when the version's signing key was revoked, else ``exc``."""
        key_id = _key_id(path)
        if key_id is None or key_id not in revoked_key_ids(self.cfg.paths.keys):
            return exc
        return AdapterRevoked(
            f"adapter {adapter_id!r} v{version} is signed by key {key_id}, which was revoked "
            "(`qlp keys revoke`); it is no longer served",
            param="model",
        )


def refusal(record: AdapterRecord) -> SignatureError:
    """Why a request for an unverified ``record`` is refused: 403 ``adapter_revoked`` when
    its key was revoked, else 424 ``adapter_verification_failed``."""
    if record.revoked:
        return AdapterRevoked(record.problem or f"adapter {record.adapter_id!r} is revoked",
                              param="model")  # fmt: skip
    return SignatureError(
        f"adapter {record.adapter_id!r} v{record.version} does not verify: {record.problem}"
    )


def _files_stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, change time) of every file under a version directory: what changes
    when a file is written, replaced, added or removed."""
    out = []
    for file in sorted(path.rglob("*")):
        try:
            st = file.stat()
        except FileNotFoundError:
            continue
        if file.is_file():
            out.append((file.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _key_id(path: Path) -> str | None:
    """The signing key id named by a verified version's manifest."""
    try:
        return json.loads((path / MANIFEST_FILE).read_text()).get("key_id")
    except (OSError, ValueError):
        return None


__all__ = ["AdapterRecord", "Registry", "refusal", "validate_adapter_id"]
