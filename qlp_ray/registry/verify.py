"""Verification of one adapter version directory: signature, key, files, labels.

``check_signed`` is what stands between a directory on disk and a loader: every
refusal raises ``SignatureError`` with a message that names the problem (unsigned,
untrusted key, bad signature, which file changed / was added / is missing, an id,
version or base-model mismatch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from qlp_ray.core.errors import InvalidRequest, SignatureError
from qlp_ray.registry.manifest import (
    MANIFEST_FILE,
    METADATA_FILE,
    REQUIRED_FILES,
    SIGNATURE_FILE,
    Manifest,
    diff_files,
    hash_files,
)
from qlp_ray.registry.signing import UnsignedAdapter, verify_bytes


@dataclass(frozen=True)
class AdapterRecord:
    """One adapter version as the registry sees it."""

    adapter_id: str
    domain: str
    version: int
    path: Path
    signed: bool
    base_model: str
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why ``signed`` is False, when it is
    revoked: bool = False  # signed by a key `qlp keys revoke` dropped

    @property
    def kind(self) -> str:
        """``adapter`` (served and routed to), or a training artefact kept in the registry:
        ``reward_model`` (PPO/RLHF reward), ``meta_init`` (a meta-learned starting point)."""
        return str(self.metadata.get("kind", "adapter"))

    def summary(self) -> dict[str, Any]:
        """JSON-ready listing entry (no centroid)."""
        out: dict[str, Any] = {
            "id": self.adapter_id,
            "domain": self.domain,
            "version": self.version,
            "path": str(self.path),
            "signed": self.signed,
            "base_model": self.base_model,
            "kind": self.kind,
        }
        for key in ("metrics", "method", "data_hash"):
            if key in self.metadata:
                out[key] = self.metadata[key]
        if self.problem:
            out["problem"] = self.problem
        return out


def check_signed(
    adapter_id: str,
    version: int,
    path: Path,
    trusted: dict[str, Ed25519PublicKey],
    expected_base_model: str | None = None,
) -> AdapterRecord:
    """Verify a signed version directory found as ``adapter_id`` v``version``."""
    where = f"adapter {adapter_id!r} v{version}"
    manifest_path, sig_path = path / MANIFEST_FILE, path / SIGNATURE_FILE
    if not sig_path.is_file():
        if manifest_path.is_file():
            raise UnsignedAdapter(f"{where} is unsigned: no signature ({SIGNATURE_FILE})")
        raise UnsignedAdapter(f"{where} is unsigned: no {MANIFEST_FILE} or {SIGNATURE_FILE}")
    if not manifest_path.is_file():
        raise SignatureError(f"{where}: file {MANIFEST_FILE!r} is missing")
    manifest_bytes = manifest_path.read_bytes()
    try:
        key_id = verify_bytes(manifest_bytes, sig_path.read_bytes(), trusted)
    except SignatureError as exc:
        raise SignatureError(f"{where}: {exc}") from None
    try:
        manifest = Manifest.from_bytes(manifest_bytes)
    except ValueError as exc:
        raise SignatureError(f"{where}: malformed manifest: {exc}") from None
    if manifest.key_id != key_id:
        raise SignatureError(
            f"{where}: manifest names key {manifest.key_id!r} but was signed by {key_id!r}"
        )
    _check_labels(where, manifest.adapter_id, manifest.version, adapter_id, version, "manifest")
    try:
        actual = hash_files(path)
    except InvalidRequest as exc:
        raise SignatureError(f"{where}: {exc}") from None
    problems = diff_files(manifest.files, actual)
    if problems:
        raise SignatureError(f"{where} was tampered with: {'; '.join(problems)}")
    for name in (*REQUIRED_FILES, METADATA_FILE):
        if name not in manifest.files:
            raise SignatureError(f"{where}: manifest does not cover required file {name!r}")
    info = read_metadata(path)
    _check_labels(
        where, info.get("adapter_id"), info.get("version"), adapter_id, version, "qlp.json"
    )
    for label in ("domain", "base_model"):
        if info.get(label) != getattr(manifest, label):
            raise SignatureError(
                f"{where}: {label} mismatch: qlp.json says {info.get(label)!r}, "
                f"signed manifest says {getattr(manifest, label)!r}"
            )
    _check_base_model(where, manifest.base_model, expected_base_model)
    return AdapterRecord(
        adapter_id=adapter_id,
        domain=manifest.domain,
        version=version,
        path=path,
        signed=True,
        base_model=manifest.base_model,
        metadata=info,
    )


def check_unsigned(
    adapter_id: str, version: int, path: Path, expected_base_model: str | None = None
) -> AdapterRecord:
    """What can still be checked without a signature: labels, base model, no odd files."""
    where = f"adapter {adapter_id!r} v{version}"
    try:
        hash_files(path)
    except InvalidRequest as exc:
        raise SignatureError(f"{where}: {exc}") from None
    info = read_metadata(path)
    _check_labels(
        where, info.get("adapter_id"), info.get("version"), adapter_id, version, "qlp.json"
    )
    base_model = str(info.get("base_model", ""))
    _check_base_model(where, base_model, expected_base_model)
    return AdapterRecord(
        adapter_id=adapter_id,
        domain=str(info.get("domain", "")),
        version=version,
        path=path,
        signed=False,
        base_model=base_model,
        metadata=info,
        problem="unsigned",
    )


def _check_labels(
    where: str, found_id: Any, found_version: Any, adapter_id: str, version: int, source: str
) -> None:
    if found_id != adapter_id:
        raise SignatureError(
            f"{where}: id mismatch: {source} says adapter {found_id!r} but it was found "
            f"as {adapter_id!r} (re-labelled or copied over another adapter)"
        )
    if found_version != version:
        raise SignatureError(
            f"{where}: version mismatch: {source} says v{found_version} "
            f"but it was found as v{version}"
        )


def _check_base_model(where: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise SignatureError(
            f"{where}: base-model mismatch: adapter was trained on {actual!r}, "
            f"but the loaded base model is {expected!r}"
        )


def read_metadata(path: Path) -> dict[str, Any]:
    """``qlp.json`` of a version directory (``{}`` if absent; ``SignatureError`` if malformed)."""
    meta = path / METADATA_FILE
    try:
        info = json.loads(meta.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"{meta} is not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise SignatureError(f"{meta} must hold a JSON object")
    return info


__all__ = ["AdapterRecord", "check_signed", "check_unsigned", "read_metadata"]
