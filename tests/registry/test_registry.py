"""The signed, versioned adapter registry on local storage (no Ray)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qlp_ray.core.config import QLPConfig, load_config
from qlp_ray.core.errors import (
    AdapterNotFound,
    ConfigError,
    InvalidRequest,
    KeyMissing,
    SignatureError,
)
from qlp_ray.registry import local as local_module
from qlp_ray.registry.local import LocalStorage, StorageError, open_storage
from qlp_ray.registry.signing import PUBLIC_KEY_FILE, init_keys
from qlp_ray.registry.store import Registry

BASE = "builtin:tiny-llama"


def make_adapter_src(root: Path, seed: int = 0) -> Path:
    """A real PEFT-shaped LoRA adapter directory: safetensors weights + adapter_config.json."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.randn(4, 32, generator=g),
            f"{prefix}.lora_B.weight": torch.randn(32, 4, generator=g),
        },
        str(root / "adapter_model.safetensors"),
    )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": BASE,
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj"],
        "bias": "none",
        "inference_mode": True,
    }
    (root / "adapter_config.json").write_text(json.dumps(config))
    return root


def meta(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    centroid = torch.nn.functional.normalize(torch.randn(384, generator=g), dim=0).tolist()
    return {
        "data_hash": "ab" * 32,
        "method": "lora",
        "metrics": {"eval_loss_before": 3.2, "eval_loss_after": 2.1},
        "centroid": centroid,
    }


@pytest.fixture
def cfg(tmp_path: Path) -> QLPConfig:
    config = load_config(overrides={"paths": {"home": str(tmp_path / "home")}}, environ={})
    init_keys(config.paths.keys)
    return config


@pytest.fixture
def registry(cfg: QLPConfig) -> Registry:
    return Registry(cfg)


def register(reg: Registry, tmp_path: Path, adapter_id: str, seed: int = 0, **kw):
    src = make_adapter_src(tmp_path / f"src-{adapter_id}-{seed}", seed)
    return reg.register(
        src,
        adapter_id=adapter_id,
        domain=kw.pop("domain", adapter_id),
        base_model=BASE,
        metadata=meta(seed),
        **kw,
    )


def test_register_then_verify_round_trip(registry: Registry, tmp_path: Path) -> None:
    rec = register(registry, tmp_path, "dataeng")
    assert (rec.adapter_id, rec.domain, rec.version, rec.signed) == ("dataeng", "dataeng", 1, True)
    assert rec.path == Path(registry.cfg.registry_uri) / "dataeng" / "v1"
    assert sorted(p.name for p in rec.path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
        "manifest.sig",
        "qlp.json",
    ]
    info = json.loads((rec.path / "qlp.json").read_text())
    assert info["adapter_id"] == "dataeng" and info["version"] == 1 and info["base_model"] == BASE
    assert len(info["centroid"]) == 384 and info["metrics"]["eval_loss_after"] == 2.1
    manifest = json.loads((rec.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "qlp.json",
    }
    assert registry.verified_path("dataeng", expected_base_model=BASE) == rec.path
    # the published weights are byte-for-byte the trained ones
    src = load_file(str(tmp_path / "src-dataeng-0" / "adapter_model.safetensors"))
    out = load_file(str(rec.path / "adapter_model.safetensors"))
    assert all(torch.equal(src[k], out[k]) for k in src)


def test_versions_and_current_pointer(registry: Registry, tmp_path: Path) -> None:
    assert register(registry, tmp_path, "devops", seed=1).version == 1
    assert register(registry, tmp_path, "devops", seed=2).version == 2
    root = Path(registry.cfg.registry_uri)
    assert (root / "devops" / "CURRENT").read_text() == "2\n"
    assert registry.get("devops").version == 2
    registry.set_current("devops", 1)
    assert (root / "devops" / "CURRENT").read_text() == "1\n"
    assert [r.version for r in registry.list()] == [1]
    assert [r.version for r in registry.list(all_versions=True)] == [1, 2]
    assert register(registry, tmp_path, "devops", seed=3).version == 3  # last + 1, not current + 1
    with pytest.raises(AdapterNotFound, match=r"no version 7 \(versions: 1, 2, 3\)"):
        registry.set_current("devops", 7)
    with pytest.raises(AdapterNotFound, match=r"unknown adapter 'nope' \(known: devops\)"):
        registry.get("nope")


def _change(path: Path) -> str:
    data = bytearray((path / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (path / "adapter_model.safetensors").write_bytes(bytes(data))
    return r"file 'adapter_model.safetensors' was changed"


def _add(path: Path) -> str:
    (path / "extra.py").write_text("import os\n")
    return r"file 'extra.py' was added"


def _delete(path: Path) -> str:
    (path / "adapter_config.json").unlink()
    return r"file 'adapter_config.json' is missing"


def _edit_metadata_domain(path: Path) -> str:
    info = json.loads((path / "qlp.json").read_text())
    info["domain"] = "devops"
    (path / "qlp.json").write_text(json.dumps(info))
    return r"file 'qlp.json' was changed"


def _edit_metadata_id(path: Path) -> str:
    info = json.loads((path / "qlp.json").read_text())
    info["adapter_id"] = "devops"
    (path / "qlp.json").write_text(json.dumps(info))
    return r"file 'qlp.json' was changed"


def _edit_manifest(path: Path) -> str:
    raw = (path / "manifest.json").read_bytes().replace(b'"domain":"ml"', b'"domain":"devops"')
    (path / "manifest.json").write_bytes(raw)
    return r"bad signature"


def _unsign(path: Path) -> str:
    (path / "manifest.sig").unlink()
    return r"unsigned: no signature"


def _symlink(path: Path) -> str:
    (path / "adapter_config.json").unlink()
    (path / "adapter_config.json").symlink_to("/etc/hostname")
    return r"symlink 'adapter_config.json'"


@pytest.mark.parametrize(
    "tamper",
    [
        _change,
        _add,
        _delete,
        _edit_metadata_domain,
        _edit_metadata_id,
        _edit_manifest,
        _unsign,
        _symlink,
    ],
)
def test_tampered_adapter_is_refused_naming_the_problem(
    registry: Registry, tmp_path: Path, tamper
) -> None:
    rec = register(registry, tmp_path, "ml")
    expected = tamper(rec.path)
    with pytest.raises(SignatureError, match=expected):
        registry.verified_path("ml")
    listed = registry.list()
    assert [(r.adapter_id, r.signed) for r in listed] == [("ml", False)]


def test_adapter_copied_over_another_id_is_refused(registry: Registry, tmp_path: Path) -> None:
    a = register(registry, tmp_path, "dataeng")
    b = register(registry, tmp_path, "devops", seed=1)
    shutil.rmtree(b.path)
    shutil.copytree(a.path, b.path)
    with pytest.raises(
        SignatureError, match="id mismatch: manifest says adapter 'dataeng'.*'devops'"
    ):
        registry.verify("devops")
    assert registry.verify("dataeng").signed


def test_older_version_copied_over_newer_is_refused(registry: Registry, tmp_path: Path) -> None:
    v1 = register(registry, tmp_path, "api", seed=1)
    v2 = register(registry, tmp_path, "api", seed=2)
    shutil.rmtree(v2.path)
    shutil.copytree(v1.path, v2.path)
    with pytest.raises(SignatureError, match="version mismatch: manifest says v1 .* found as v2"):
        registry.verify("api", 2)


def test_base_model_mismatch_is_refused(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "api")
    with pytest.raises(SignatureError, match="base-model mismatch.*'builtin:tiny-llama'.*'gpt2'"):
        registry.verify("api", expected_base_model="gpt2")


def test_untrusted_key_refused_until_trusted(cfg: QLPConfig, tmp_path: Path) -> None:
    rec = register(Registry(cfg), tmp_path, "frontend")
    old_pub = tmp_path / "old.pub.pem"
    shutil.copy(cfg.paths.keys / PUBLIC_KEY_FILE, old_pub)
    init_keys(cfg.paths.keys, force=True)  # rotate: the adapter's key is no longer ours
    with pytest.raises(SignatureError, match="signed by untrusted key"):
        Registry(cfg).verify("frontend")
    trusting = cfg.model_copy(deep=True)
    trusting.registry.trusted_keys = [old_pub]
    assert Registry(trusting).verify("frontend").path == rec.path


def test_unsigned_allowed_with_warning_when_not_required(
    cfg: QLPConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = register(Registry(cfg), tmp_path, "ml")
    lax = cfg.model_copy(deep=True)
    lax.registry.require_signature = False
    (rec.path / "manifest.sig").unlink()
    (rec.path / "manifest.json").unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        Registry(cfg).verify("ml")
    with caplog.at_level(logging.WARNING, logger="qlp_ray.registry.store"):
        got = Registry(lax).verify("ml")
    assert got.signed is False and got.domain == "ml"
    assert "UNSIGNED adapter ml v1" in caplog.text
    assert Registry(lax).list()[0].signed is False  # listing stays honest


def test_tampered_signed_adapter_refused_even_when_signature_optional(
    cfg: QLPConfig, tmp_path: Path
) -> None:
    rec = register(Registry(cfg), tmp_path, "ml")
    lax = cfg.model_copy(deep=True)
    lax.registry.require_signature = False
    _change(rec.path)
    with pytest.raises(SignatureError, match="adapter_model.safetensors"):
        Registry(lax).verify("ml")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".pkl", ".ckpt"])
def test_pickle_file_in_source_is_refused(registry: Registry, tmp_path: Path, suffix: str) -> None:
    src = make_adapter_src(tmp_path / "src")
    (src / f"optimizer{suffix}").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InvalidRequest, match=f"pickle file 'optimizer{suffix}'"):
        registry.register(src, adapter_id="ml", domain="ml", base_model=BASE, metadata={})
    assert registry.list() == []


def test_source_needs_weights_and_regular_files(registry: Registry, tmp_path: Path) -> None:
    src = make_adapter_src(tmp_path / "src")
    (src / "link.json").symlink_to(src / "adapter_config.json")
    with pytest.raises(InvalidRequest, match="'link.json'.*not a regular file"):
        registry.register(src, adapter_id="ml", domain="ml", base_model=BASE)
    (src / "link.json").unlink()
    (src / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidRequest, match="lacks adapter_model.safetensors"):
        registry.register(src, adapter_id="ml", domain="ml", base_model=BASE)


@pytest.mark.parametrize("bad_id", ["", "ML", "a+b", "-lead", "../etc", "a/b", "x" * 65, "sp ace"])
def test_bad_adapter_id_is_refused(registry: Registry, tmp_path: Path, bad_id: str) -> None:
    src = make_adapter_src(tmp_path / "src")
    with pytest.raises(InvalidRequest, match="invalid adapter id"):
        registry.register(src, adapter_id=bad_id, domain="ml", base_model=BASE)
    assert registry.list() == []


def test_register_without_key_writes_nothing(tmp_path: Path) -> None:
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "h")}}, environ={})
    reg = Registry(cfg)
    with pytest.raises(KeyMissing, match="qlp keys init"):
        reg.register(
            make_adapter_src(tmp_path / "src"), adapter_id="ml", domain="ml", base_model=BASE
        )
    assert reg.list() == [] and not Path(cfg.registry_uri).exists()


def test_failed_publish_leaves_nothing_visible(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copytree = shutil.copytree

    def crash_after_first_file(src, dst, **kw):
        copied = []

        def copy(s, d):
            if copied:
                raise OSError(28, "No space left on device")
            copied.append(shutil.copy2(s, d))

        return real_copytree(src, dst, **{**kw, "copy_function": copy})

    monkeypatch.setattr(local_module.shutil, "copytree", crash_after_first_file)
    with pytest.raises(StorageError, match="could not publish adapter 'ml' version 1"):
        register(registry, tmp_path, "ml")
    root = Path(registry.cfg.registry_uri)
    assert registry.list() == [] and registry.storage.versions("ml") == []
    assert not (root / "ml" / "v1").exists() and not (root / "ml" / "CURRENT").exists()
    assert list((root / ".staging").iterdir()) == []  # the half-copied stage was removed
    monkeypatch.undo()
    assert register(registry, tmp_path, "ml").version == 1  # and the next try works


def test_publish_refuses_existing_version(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "reg")
    stage = make_adapter_src(tmp_path / "stage")
    store.publish(stage, "ml", 1)
    with pytest.raises(StorageError, match="version 1 already exists"):
        store.publish(stage, "ml", 1)
    assert store.adapter_ids() == ["ml"] and store.versions("ml") == [1]


def test_pointer_is_replaced_atomically_and_corruption_is_named(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    assert store.read_pointer("ml") is None
    store.write_pointer("ml", 3)
    store.write_pointer("ml", 4)
    assert store.read_pointer("ml") == 4
    assert [p.name for p in (tmp_path / "ml").iterdir()] == ["CURRENT"]  # no tmp files left
    (tmp_path / "ml" / "CURRENT").write_text("four")
    with pytest.raises(StorageError, match="corrupt pointer.*'four'"):
        store.read_pointer("ml")


def test_open_storage(tmp_path: Path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert open_storage(f"file://{tmp_path}").root == tmp_path.resolve()
    with pytest.raises(ConfigError, match="not available yet"):
        open_storage("s3://bucket/prefix")


def test_a_serving_home_without_the_private_key_verifies_but_cannot_sign(
    cfg: QLPConfig, tmp_path: Path
) -> None:
    """The private key stays where adapters are trained; a serving node holds only the
    public key (``registry.trusted_keys``, e.g. mounted from a ConfigMap) and reads the
    shared registry."""
    from qlp_ray.core.errors import KeyMissing

    rec = register(Registry(cfg), tmp_path, "dataeng")  # the training side signs
    public = tmp_path / "distributed" / "qlp-signing.pub.pem"
    public.parent.mkdir()
    shutil.copy(cfg.paths.keys / PUBLIC_KEY_FILE, public)
    serving = load_config(
        overrides={
            "paths": {"home": str(tmp_path / "serving-home")},  # no keys/ at all
            "registry": {"uri": str(cfg.registry_uri), "trusted_keys": [str(public)]},
        },
        environ={},
    )
    assert not serving.paths.keys.exists()
    reader = Registry(serving)
    assert reader.verify("dataeng").path == rec.path and reader.verify("dataeng").signed
    with pytest.raises(KeyMissing, match="no signing key"):
        register(reader, tmp_path, "frontend")
    assert [r.adapter_id for r in reader.list()] == ["dataeng"]  # nothing half-written
    assert not serving.paths.keys.exists()
    _change(rec.path)
    with pytest.raises(SignatureError):
        reader.verify("dataeng")


def test_listing_and_router_checks_hash_a_version_again_only_when_it_changed(
    cfg: QLPConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/models`` and the router's table refreshes list and check every adapter:
    unchanged versions are not re-hashed or audited each time; loads always are."""
    from qlp_ray.registry import store as store_module
    from qlp_ray.registry.audit import audit_for

    registry = Registry(cfg)
    rec = register(registry, tmp_path, "dataeng")
    register(registry, tmp_path, "frontend", seed=3)
    hashed: list[str] = []
    real = store_module.check_signed

    def counting(adapter_id, *args, **kwargs):
        hashed.append(adapter_id)
        return real(adapter_id, *args, **kwargs)

    monkeypatch.setattr(store_module, "check_signed", counting)
    audit = audit_for(cfg)
    verifies = lambda: len(audit.events("dataeng", kinds=("verify",)))  # noqa: E731

    assert [r.signed for r in registry.list()] == [True, True]
    assert [r.signed for r in registry.list()] == [True, True]
    assert sorted(hashed) == ["dataeng", "frontend"]  # the second listing hashed nothing
    before = verifies()
    registry.verify("dataeng")  # a load: always hashed and audited
    assert hashed.count("dataeng") == 2 and verifies() == before + 1
    for _ in range(3):  # the router's refreshes reuse that check
        assert registry.verify("dataeng", reuse=True).signed
    assert hashed.count("dataeng") == 2 and verifies() == before + 1
    other = registry.verify("dataeng", expected_base_model=BASE, reuse=True)  # another question
    assert other.signed and hashed.count("dataeng") == 3

    _change(rec.path)  # tampered: the next listing and check see it
    listed = {r.adapter_id: r for r in registry.list()}
    assert listed["dataeng"].signed is False and "tampered" in listed["dataeng"].problem
    with pytest.raises(SignatureError, match="tampered"):
        registry.verify("dataeng", reuse=True)
    assert listed["frontend"].signed and hashed.count("frontend") == 1

    init_keys(cfg.paths.keys, force=True)  # the trusted keys changed: checked again
    assert {r.adapter_id: r.signed for r in registry.list()} == {
        "dataeng": False,
        "frontend": False,
    }
    assert hashed.count("frontend") == 2
