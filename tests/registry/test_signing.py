"""Ed25519 keys, manifest hashing and signatures (no Ray)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import ConfigError, InvalidRequest, KeyMissing, SignatureError
from qlp_ray.registry.manifest import Manifest, diff_files, hash_files
from qlp_ray.registry.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    init_keys,
    load_signing_key,
    sign_bytes,
    trusted_public_keys,
    verify_bytes,
)


def test_init_keys_writes_private_0600_and_key_id_from_raw_public_key(tmp_path: Path) -> None:
    info = init_keys(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(info.private_key_path).st_mode) == 0o600
    pub = serialization.load_pem_public_key(info.public_key_path.read_bytes())
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert info.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert load_signing_key(tmp_path / "keys").key_id == info.key_id


def test_init_keys_refuses_overwrite_without_force(tmp_path: Path) -> None:
    first = init_keys(tmp_path)
    before = (tmp_path / PRIVATE_KEY_FILE).read_bytes()
    with pytest.raises(InvalidRequest, match="--force"):
        init_keys(tmp_path)
    assert (tmp_path / PRIVATE_KEY_FILE).read_bytes() == before
    second = init_keys(tmp_path, force=True)
    assert second.key_id != first.key_id
    assert stat.S_IMODE(os.stat(second.private_key_path).st_mode) == 0o600


def test_load_signing_key_missing_hints_keys_init(tmp_path: Path) -> None:
    with pytest.raises(KeyMissing, match="qlp keys init"):
        load_signing_key(tmp_path / "nowhere")


def test_sign_verify_round_trip_and_refusals(tmp_path: Path) -> None:
    init_keys(tmp_path / "a")
    init_keys(tmp_path / "b")
    key_a, key_b = load_signing_key(tmp_path / "a"), load_signing_key(tmp_path / "b")
    cfg = load_config(overrides={"paths": {"home": str(tmp_path)}}, environ={})
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / PUBLIC_KEY_FILE).write_bytes(
        (tmp_path / "a" / PUBLIC_KEY_FILE).read_bytes()
    )
    trusted = trusted_public_keys(cfg)
    assert set(trusted) == {key_a.key_id}

    data = b'{"adapter_id":"x"}'
    sig = sign_bytes(data, key_a)
    assert json.loads(sig)["key_id"] == key_a.key_id
    assert verify_bytes(data, sig, trusted) == key_a.key_id
    with pytest.raises(SignatureError, match="bad signature"):
        verify_bytes(data + b" ", sig, trusted)
    with pytest.raises(SignatureError, match=f"untrusted key '{key_b.key_id}'"):
        verify_bytes(data, sign_bytes(data, key_b), trusted)
    with pytest.raises(SignatureError, match="malformed signature"):
        verify_bytes(data, b"not json", trusted)

    # an extra trusted key from the config is accepted too
    cfg2 = load_config(
        overrides={
            "paths": {"home": str(tmp_path)},
            "registry": {"trusted_keys": [str(tmp_path / "b" / PUBLIC_KEY_FILE)]},
        },
        environ={},
    )
    assert set(trusted_public_keys(cfg2)) == {key_a.key_id, key_b.key_id}
    assert verify_bytes(data, sign_bytes(data, key_b), trusted_public_keys(cfg2)) == key_b.key_id


def test_trusted_key_file_missing_is_config_error(tmp_path: Path) -> None:
    cfg = load_config(
        overrides={"paths": {"home": str(tmp_path)}, "registry": {"trusted_keys": ["/no/key.pem"]}},
        environ={},
    )
    with pytest.raises(ConfigError, match="/no/key.pem"):
        trusted_public_keys(cfg)


def test_hash_files_skips_signature_files_and_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"")
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "manifest.sig").write_text("{}")
    hashes = hash_files(tmp_path)
    assert hashes == {
        "a.txt": hashlib.sha256(b"hello").hexdigest(),
        "sub/b.txt": hashlib.sha256(b"").hexdigest(),
    }
    (tmp_path / "link").symlink_to(tmp_path / "a.txt")
    with pytest.raises(InvalidRequest, match="symlink 'link'"):
        hash_files(tmp_path)


def test_manifest_canonical_bytes_sorted_compact_and_diff() -> None:
    m = Manifest(
        adapter_id="x",
        version=1,
        base_model="b",
        domain="d",
        files={"z": "1", "a": "2"},
        created_at="2026-01-01T00:00:00+00:00",
        key_id="k",
    )
    raw = m.canonical_bytes()
    assert b" " not in raw and b"\n" not in raw
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert Manifest.from_bytes(raw) == m
    assert diff_files({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "X", "d": "4"}) == [
        "file 'c' is missing",
        "file 'd' was added",
        "file 'b' was changed (sha256 differs)",
    ]
