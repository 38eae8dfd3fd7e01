"""S3Storage against a real S3-compatible HTTP server (moto in server mode on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qlp_ray.core.errors import AdapterNotFound, ConfigError, InvalidRequest, NotFound
from qlp_ray.registry.local import StorageError
from qlp_ray.registry.s3 import S3ArtifactStore, S3Storage, parse_s3_uri
from tests.helpers.moto_s3 import moto_s3

REPO = Path(__file__).resolve().parents[2]
BUCKET = "qlp-test"


@pytest.fixture(scope="module")
def s3_cfg():
    with moto_s3(BUCKET) as cfg:
        yield cfg


@pytest.fixture
def storage(s3_cfg, tmp_path, request):
    prefix = f"t/{request.node.name}"
    return S3Storage.from_uri(f"s3://{BUCKET}/{prefix}", s3_cfg, tmp_path / "cache")


def _adapter_dir(root: Path, tag: str, n_files: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(f'{{"r": 8, "tag": "{tag}"}}')
    for i in range(n_files - 1):
        (root / f"part{i}.safetensors").write_bytes(os.urandom(2048) + tag.encode())
    return root


def test_publish_fetch_pointer_roundtrip(storage, tmp_path):
    src = _adapter_dir(tmp_path / "stage", "v1")
    (src / "sub").mkdir()
    (src / "sub" / "qlp.json").write_text('{"domain": "api"}')
    assert storage.adapter_ids() == [] and storage.versions("api") == []
    storage.publish(src, "api", 1)
    storage.publish(_adapter_dir(tmp_path / "stage2", "v2"), "api", 2)
    assert storage.adapter_ids() == ["api"] and storage.versions("api") == [1, 2]
    got = storage.fetch("api", 1)
    for f in src.rglob("*"):
        if f.is_file():
            assert (got / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert storage.fetch("api", 1) == got  # cached copy reused
    assert storage.read_pointer("api") is None
    storage.write_pointer("api", 2)
    assert storage.read_pointer("api") == 2
    with pytest.raises(AdapterNotFound, match="no published version 7"):
        storage.write_pointer("api", 7)
    with pytest.raises(StorageError, match="already exists"):
        storage.publish(src, "api", 1)
    with pytest.raises(AdapterNotFound, match="invalid adapter id"):
        storage.versions("../etc")


def test_tampered_object_is_refused(storage, tmp_path):
    storage.publish(_adapter_dir(tmp_path / "stage", "v1"), "ml", 1)
    s3 = storage._s3
    key = s3.key("adapters", "ml", "files", "1", "part0.safetensors")
    s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"evil weights")
    with pytest.raises(InvalidRequest, match="does not match its published SHA-256"):
        storage.fetch("ml", 1)
    assert not (storage.cache_dir / "ml" / "v1").exists()


def test_failed_upload_leaves_no_version(storage, tmp_path):
    from botocore.exceptions import EndpointConnectionError

    calls = {"n": 0}

    def drop_third_put(**_kw):  # the network goes away after two files (retries fail too)
        calls["n"] += 1
        if calls["n"] >= 3:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1")

    client = storage._s3.client
    client.meta.events.register("before-send.s3.PutObject", drop_third_put)
    try:
        with pytest.raises(EndpointConnectionError):
            storage.publish(_adapter_dir(tmp_path / "stage", "v1", n_files=5), "devops", 1)
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", drop_third_put)
    assert storage.versions("devops") == [] and storage.adapter_ids() == []
    with pytest.raises(AdapterNotFound):
        storage.fetch("devops", 1)


_KILLED_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qlp_ray.core.config import S3Config
    from qlp_ray.registry.s3 import S3Storage
    cfg = S3Config(endpoint_url=sys.argv[1], access_key_id="test", secret_access_key="test")
    storage = S3Storage.from_uri(sys.argv[2], cfg, Path(sys.argv[3]))
    def slow_ack(**kw):
        sys.stdout.write("uploaded\\n"); sys.stdout.flush()
        time.sleep(0.5)
    storage._s3.client.meta.events.register("after-call.s3.PutObject", slow_ack)
    storage.publish(Path(sys.argv[4]), "frontend", 1)
    sys.stdout.write("done\\n"); sys.stdout.flush()
    """
)


def test_sigkilled_upload_is_invisible_and_retry_publishes(storage, s3_cfg, tmp_path):
    src = _adapter_dir(tmp_path / "stage", "v1", n_files=8)
    uri = f"s3://{storage._s3.bucket}/{storage._s3.prefix}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PUBLISHER, s3_cfg.endpoint_url, uri,
         str(tmp_path / "c2"), str(src)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert lines == ["uploaded", "uploaded"]
    orphans = storage._s3.list_keys(storage._s3.key("adapters", "frontend") + "/")
    assert 2 <= len(orphans) < 8, orphans  # interrupted mid-way, some files landed
    assert storage.versions("frontend") == [] and storage.adapter_ids() == []
    with pytest.raises(AdapterNotFound):
        storage.fetch("frontend", 1)
    # A retry overwrites the orphans and publishes the complete version.
    storage.publish(src, "frontend", 1)
    assert storage.versions("frontend") == [1]
    got = storage.fetch("frontend", 1)
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in src.iterdir())


def test_artifacts_upload_and_download(s3_cfg, tmp_path):
    store = S3ArtifactStore.from_uri(f"s3://{BUCKET}/art", s3_cfg)
    report = tmp_path / "report.json"
    report.write_text('{"api": {"examples": 612}}')
    marker = store.upload("reports", "build-1", report, meta={"domains": 1})
    assert marker["domains"] == 1 and marker["files"][0]["path"] == "report.json"
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "api.jsonl").write_text('{"instruction": "x"}\n')
    store.upload("datasets", "sft-1", ds)
    assert store.names("datasets") == ["sft-1"] and store.names("reports") == ["build-1"]
    out = store.download("datasets", "sft-1", tmp_path / "out")
    assert (out / "api.jsonl").read_text() == '{"instruction": "x"}\n'
    with pytest.raises(InvalidRequest, match="already exists"):
        store.upload("reports", "build-1", report)
    with pytest.raises(NotFound):
        store.download("reports", "nope", tmp_path / "x")
    with pytest.raises(InvalidRequest, match="artifact kind"):
        store.names("models")


def test_parse_uri():
    assert parse_s3_uri("s3://b/a/b/") == ("b", "a/b")
    assert parse_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ConfigError):
        parse_s3_uri("/local/dir")
    with pytest.raises(ConfigError):
        parse_s3_uri("s3:///x")


def test_registry_signs_into_s3_and_refuses_tampering(s3_cfg, tmp_path):
    """The real Registry (sign, publish, verify) on top of S3Storage."""
    from safetensors.numpy import save_file

    from qlp_ray.core.config import load_config
    from qlp_ray.core.errors import SignatureError
    from qlp_ray.registry import Registry
    from qlp_ray.registry.signing import init_keys

    s3 = s3_cfg.model_dump()
    cfg = load_config(overrides={"paths": {"home": str(tmp_path / "home")}, "s3": s3,
                                 "registry": {"uri": f"s3://{BUCKET}/registry"}},
                      environ={})  # fmt: skip
    init_keys(cfg.paths.keys)
    reg = Registry(cfg)  # registry.uri s3://... -> S3Storage on the configured endpoint
    storage = reg.storage
    assert isinstance(storage, S3Storage)
    src = tmp_path / "adapter"
    src.mkdir()
    save_file({"lora_A": np.ones((2, 4), np.float32)}, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text('{"r": 2}')
    rec = reg.register(src, adapter_id="api", domain="api", base_model="builtin:tiny-llama")
    assert rec.signed and rec.version == 1 and storage.read_pointer("api") == 1
    reg.register(src, adapter_id="api", domain="api", base_model="builtin:tiny-llama")
    assert storage.versions("api") == [1, 2] and reg.get("api").version == 2
    # Overwrite the weights object in the bucket: a fresh reader (empty cache, e.g. another
    # machine) refuses the download by digest; this reader's verified cache is unaffected.
    key = storage._s3.key("adapters", "api", "files", "1", "adapter_model.safetensors")
    storage._s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"evil")
    fresh = S3Storage.from_uri(f"s3://{BUCKET}/registry", s3_cfg, tmp_path / "cache2")
    with pytest.raises(InvalidRequest, match="SHA-256"):
        Registry(cfg, storage=fresh).verify("api", 1)
    assert reg.verify("api", 1).signed
    # Whoever can rewrite the marker too gets past the digest check, not the signature.
    marker_key = storage._s3.key("adapters", "api", "published", "00000001.json")
    marker = storage._s3.get_json(marker_key)
    for entry in marker["files"]:
        if entry["path"] == "adapter_model.safetensors":
            entry["sha256"] = hashlib.sha256(b"evil").hexdigest()
            entry["size"] = 4
    storage._s3.put_json(marker_key, marker)
    with pytest.raises(SignatureError, match="tampered"):
        Registry(cfg, storage=fresh).verify("api", 1)
    assert reg.verify("api", 2).signed
