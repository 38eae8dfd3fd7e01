"""Key rotation, trusted keys, the audit log and version-rollback protection (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from qlp_ray.core.config import QLPConfig, load_config
from qlp_ray.core.errors import InvalidRequest, NotFound, SignatureError
from qlp_ray.registry.audit import RollbackRefused, audit_for
from qlp_ray.registry.keyring import revoke_key, rotate_keys, trusted_keys
from qlp_ray.registry.signing import init_keys
from qlp_ray.registry.store import Registry

BASE = "builtin:tiny-llama"


@pytest.fixture
def cfg(tmp_path: Path) -> QLPConfig:
    c = load_config(overrides={"paths": {"home": str(tmp_path / "home")}}, environ={})
    init_keys(c.paths.keys)
    return c


def _register(reg: Registry, tmp_path: Path, seed: int, **kw):
    src = tmp_path / f"src{seed}"
    src.mkdir(exist_ok=True)
    w = np.random.default_rng(seed).standard_normal((4, 8)).astype(np.float32)
    save_file({"lora_A": w}, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text('{"r": 4}')
    return reg.register(src, adapter_id="api", domain="api", base_model=BASE, **kw)


def _kinds(cfg: QLPConfig) -> list[tuple[str, int | None]]:
    return [(e.kind, e.version) for e in audit_for(cfg).events("api")]


def test_every_registry_step_is_audited(cfg, tmp_path):
    reg = Registry(cfg)
    _register(reg, tmp_path, 1)
    _register(reg, tmp_path, 2, make_current=False)  # a candidate: not current yet
    assert reg.get("api").version == 1
    reg.set_current("api", 2, reason="experiment won")
    assert _kinds(cfg) == [("sign", 1), ("promote", 1), ("verify", 1), ("sign", 2),
                           ("verify", 2), ("promote", 2)]  # fmt: skip
    events = audit_for(cfg).events("api")
    assert events[0].payload["key_id"] == events[2].payload["key_id"]
    assert events[-1].payload == {"reason": "experiment won", "previous": 1}
    # a refused verification is recorded with the problem
    path = reg.storage.fetch("api", 2)
    (path / "adapter_config.json").write_text('{"r": 5}')
    with pytest.raises(SignatureError, match="tampered"):
        reg.verify("api", 2)
    last = audit_for(cfg).events("api", ("verify",))[-1]
    assert last.payload["ok"] is False and "adapter_config.json" in last.payload["problem"]


def test_rollback_protection(cfg, tmp_path):
    reg = Registry(cfg)
    for seed in (1, 2, 3):
        _register(reg, tmp_path, seed)
    # Someone with write access to the storage (not the registry) restores an old pointer:
    reg.storage.write_pointer("api", 1)
    with pytest.raises(RollbackRefused, match=r"pointer names v1.*v3 was made current"):
        reg.verify("api")
    with pytest.raises(RollbackRefused):
        reg.verified_path("api")
    assert reg.verify("api", 1).signed  # naming a version explicitly is still fine
    # An explicit, audited rollback is accepted ...
    reg.rollback("api", 2, reason="bad outputs in v3")
    assert reg.verify("api").version == 2
    assert audit_for(cfg).events("api", ("rollback",))[-1].payload["previous"] == 1
    # ... and set_current to an older version is recorded as a rollback too.
    reg.set_current("api", 1)
    assert audit_for(cfg).events("api", ("rollback", "promote"))[-1].kind == "rollback"
    assert reg.verify("api").version == 1
    # Forward moves are never a downgrade.
    reg.storage.write_pointer("api", 3)
    assert reg.verify("api").version == 3
    off = Registry(cfg, audit=None)  # with the audit off there is no protection to test
    off.storage.write_pointer("api", 1)
    assert off.verify("api").version == 1


def test_key_rotation_keeps_old_versions_verifiable_until_revoked(cfg, tmp_path):
    reg = Registry(cfg)
    _register(reg, tmp_path, 1)
    old, new = rotate_keys(cfg, audit_for(cfg))
    assert old != new
    v2 = _register(reg, tmp_path, 2)
    assert json.loads((v2.path / "manifest.json").read_text())["key_id"] == new
    assert reg.verify("api", 1).signed  # signed by the retired, still-trusted key
    roles = {k.key_id: k.role for k in trusted_keys(cfg)}
    assert roles == {new: "signing", old: "retired"}
    with pytest.raises(InvalidRequest, match="current signing key"):
        revoke_key(cfg, new)
    revoke_key(cfg, old, audit_for(cfg))
    with pytest.raises(SignatureError, match=f"signed by key {old}, which was revoked"):
        reg.verify("api", 1)
    assert reg.verify("api", 2).signed
    with pytest.raises(NotFound):
        revoke_key(cfg, old)
    rot = audit_for(cfg).events(None, ("key_rotate",))
    assert rot[0].payload == {"old_key_id": old, "new_key_id": new}
    assert rot[1].payload == {"revoked_key_id": old}


def test_cli_keys_and_improve(cfg, tmp_path, monkeypatch):
    from qlp_ray.cli import app

    reg = Registry(cfg)
    _register(reg, tmp_path, 1)
    _register(reg, tmp_path, 2)
    monkeypatch.setenv("QLP_HOME", str(cfg.paths.root))
    run = CliRunner().invoke
    r = run(app, ["keys", "rotate"])
    assert r.exit_code == 0 and "signing key rotated" in r.output, r.output
    r = run(app, ["keys", "trusted"])
    assert r.output.count(" retired ") == 1 and r.output.count(" signing ") == 1
    reg.storage.write_pointer("api", 1)
    r = run(app, ["adapters", "verify", "api"])
    assert r.exit_code != 0 and "explicit rollback" in r.output
    r = run(app, ["improve", "rollback", "api", "1", "--reason", "test"])
    assert r.exit_code == 0, r.output
    assert run(app, ["adapters", "verify", "api"]).exit_code == 0
    r = run(app, ["improve", "audit", "--adapter", "api", "--kind", "rollback", "--json"])
    rows = [json.loads(x) for x in r.output.splitlines()]
    assert [(e["kind"], e["version"], e["payload"]["reason"]) for e in rows] == [
        ("rollback", 1, "test")
    ]


def test_a_key_dropped_into_the_trusted_dir_is_not_trusted(cfg, tmp_path, caplog):
    """Only what rotation writes counts: ``<key id>.pub.pem``, this user's, not writable by
    group or others, in a directory likewise. Adapters of any other key stay refused."""
    import logging
    import shutil

    from qlp_ray.registry.signing import PUBLIC_KEY_FILE, init_keys, key_info

    reg = Registry(cfg)
    old, _ = rotate_keys(cfg)
    attacker = init_keys(tmp_path / "attacker")
    evil = cfg.model_copy(deep=True)
    evil.paths.home = tmp_path / "attacker-home"
    shutil.copytree(tmp_path / "attacker", evil.paths.keys)
    _register(Registry(evil, storage=reg.storage, audit=None), tmp_path, 9)  # signs api v1
    trusted_dir = cfg.paths.keys / "trusted"
    assert oct(trusted_dir.stat().st_mode & 0o777) == "0o700"
    dropped = trusted_dir / "innocent.pub.pem"
    shutil.copy(tmp_path / "attacker" / PUBLIC_KEY_FILE, dropped)
    with caplog.at_level(logging.WARNING, logger="qlp_ray.registry.signing"):
        roles = {k.key_id: k.role for k in trusted_keys(cfg)}
        with pytest.raises(SignatureError, match=f"untrusted key '{attacker.key_id}'"):
            reg.verify("api", 1)
    assert attacker.key_id not in roles and roles[old] == "retired"
    assert "not named after its key" in caplog.text
    dropped.rename(trusted_dir / f"{attacker.key_id}.pub.pem")  # named right, but ...
    (trusted_dir / f"{attacker.key_id}.pub.pem").chmod(0o666)  # ... anyone may rewrite it
    assert attacker.key_id not in {k.key_id for k in trusted_keys(cfg)}
    (trusted_dir / f"{attacker.key_id}.pub.pem").chmod(0o644)
    trusted_dir.chmod(0o777)  # a directory anyone may add to: nothing in it is trusted
    assert {k.role for k in trusted_keys(cfg)} == {"signing"}
    assert key_info(cfg.paths.keys).key_id != old
