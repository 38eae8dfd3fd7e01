"""S3 (or any S3-compatible endpoint) storage for adapters, datasets and reports.

Atomic publish without transactions: the files of a version are uploaded first and
a *marker* object (the list of files with their SHA-256 and sizes) last. Readers
only ever enumerate markers, and ``fetch`` downloads exactly the files the marker
names and checks their digests, so an interrupted upload (crash, network loss)
leaves no visible version, and a retry simply overwrites the orphaned files.

Layout under ``s3://<bucket>/<prefix>/``::

    adapters/<id>/files/<version>/<file...>      version files
    adapters/<id>/published/<version>.json       marker (written last)
    adapters/<id>/current.json                   pointer {"version": n}
    artifacts/<kind>/<name>/files/<file...>      datasets, reports, trajectories
    artifacts/<kind>/<name>/published.json       marker
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlp_ray.core.errors import AdapterNotFound, ConfigError, InvalidRequest, NotFound
from qlp_ray.registry.local import ADAPTER_ID_PATTERN, StorageError
from qlp_ray.registry.storage import AdapterStorage

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig, S3Config

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ARTIFACT_KINDS = ("datasets", "reports", "trajectories")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ConfigError(f"not an s3:// URI with a bucket: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def make_client(cfg: S3Config) -> Any:
    """A boto3 S3 client for the configured endpoint (credentials: config, else boto3's chain)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url or None,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id or None,
        aws_secret_access_key=cfg.secret_access_key or None,
        config=Config(
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
            s3={"addressing_style": cfg.addressing_style},
        ),
    )


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise InvalidRequest(
            f"{kind} must be 1-128 characters of letters, digits, '.', '_', '-', got {value!r}"
        )
    return value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise InvalidRequest(f"not a directory: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise InvalidRequest(f"nothing to upload: {root} holds no files")
    return files


class _MarkedUploads:
    """Shared mechanics: upload a directory under a key, then its marker; read it back."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def get_json(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return json.loads(body)

    def put_json(self, key: str, data: dict[str, Any]) -> None:
        body = json.dumps(data, sort_keys=True).encode()
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
        )

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def list_children(self, prefix: str) -> list[str]:
        """Immediate 'sub-directory' names under ``prefix`` (which ends with '/')."""
        names: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            names.extend(
                cp["Prefix"][len(prefix) :].rstrip("/") for cp in page.get("CommonPrefixes", [])
            )
        return names

    def upload_dir(self, local: Path, files_key: str, marker_key: str, meta: dict) -> dict:
        """Upload every file of ``local`` under ``files_key``, then write the marker."""
        entries = []
        for path in _local_files(local):
            rel = path.relative_to(local).as_posix()
            self.client.upload_file(str(path), self.bucket, f"{files_key}/{rel}")
            entries.append({"path": rel, "sha256": _sha256(path), "size": path.stat().st_size})
        marker = {**meta, "files": entries, "published_at": time.time()}
        self.put_json(marker_key, marker)  # last: this makes the upload visible
        return marker

    def download_marked(self, marker: dict, files_key: str, dest: Path) -> Path:
        """Download exactly the marker's files into ``dest`` (atomic rename), checking digests."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for entry in marker["files"]:
                rel = entry["path"]
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise InvalidRequest(f"marker names an unsafe path {rel!r}")
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, f"{files_key}/{rel}", str(target))
                if _sha256(target) != entry["sha256"]:
                    raise InvalidRequest(
                        f"s3://{self.bucket}/{files_key}/{rel} does not match its published "
                        "SHA-256 (modified after publishing)"
                    )
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest


class S3Storage(AdapterStorage):
    """:class:`AdapterStorage` on S3: versions become visible only with their marker."""

    def __init__(self, client: Any, bucket: str, prefix: str, cache_dir: Path) -> None:
        self._s3 = _MarkedUploads(client, bucket, prefix)
        self.cache_dir = Path(cache_dir)

    @classmethod
    def from_uri(cls, uri: str, cfg: S3Config, cache_dir: Path) -> S3Storage:
        bucket, prefix = parse_s3_uri(uri)
        return cls(make_client(cfg), bucket, prefix, cache_dir)

    def _adapter_key(self, adapter_id: str, *parts: str) -> str:
        if not ADAPTER_ID_PATTERN.match(adapter_id):  # same ids as LocalStorage
            raise AdapterNotFound(f"invalid adapter id {adapter_id!r}", param="adapter_id")
        return self._s3.key("adapters", adapter_id, *parts)

    def adapter_ids(self) -> list[str]:
        ids = self._s3.list_children(self._s3.key("adapters") + "/")
        return sorted(i for i in ids if ADAPTER_ID_PATTERN.match(i) and self.versions(i))

    def versions(self, adapter_id: str) -> list[int]:
        prefix = self._adapter_key(adapter_id, "published") + "/"
        out = []
        for key in self._s3.list_keys(prefix):
            stem = key[len(prefix) :].removesuffix(".json")
            if key.endswith(".json") and stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def _marker_key(self, adapter_id: str, version: int) -> str:
        if version < 1:
            raise InvalidRequest(f"adapter versions start at 1, got {version}")
        return self._adapter_key(adapter_id, "published", f"{version:08d}.json")

    def publish(self, staging_dir: Path, adapter_id: str, version: int) -> None:
        marker_key = self._marker_key(adapter_id, version)
        if self._s3.exists(marker_key):
            raise StorageError(f"adapter {adapter_id!r} version {version} already exists")
        files_key = self._adapter_key(adapter_id, "files", str(version))
        t0 = time.perf_counter()
        marker = self._s3.upload_dir(
            Path(staging_dir), files_key, marker_key, {"adapter_id": adapter_id, "version": version}
        )
        logger.info(
            "published %s v%d to s3://%s/%s (%d files) in %.2f s",
            adapter_id, version, self._s3.bucket, files_key, len(marker["files"]),
            time.perf_counter() - t0,
        )  # fmt: skip

    def fetch(self, adapter_id: str, version: int) -> Path:
        marker = self._s3.get_json(self._marker_key(adapter_id, version))
        if marker is None:
            raise AdapterNotFound(f"adapter {adapter_id!r} has no published version {version}")
        dest = self.cache_dir / adapter_id / f"v{version}"
        if dest.is_dir() and _matches(dest, marker):
            return dest
        files_key = self._adapter_key(adapter_id, "files", str(version))
        return self._s3.download_marked(marker, files_key, dest)

    def read_pointer(self, adapter_id: str) -> int | None:
        data = self._s3.get_json(self._adapter_key(adapter_id, "current.json"))
        return None if data is None else int(data["version"])

    def write_pointer(self, adapter_id: str, version: int) -> None:
        if not self._s3.exists(self._marker_key(adapter_id, version)):
            raise AdapterNotFound(f"adapter {adapter_id!r} has no published version {version}")
        key = self._adapter_key(adapter_id, "current.json")
        self._s3.put_json(key, {"version": version, "updated_at": time.time()})

    def read_generation(self) -> str | None:
        data = self._s3.get_json(self._s3.key("generation.json"))
        return None if data is None else f"{data['counter']} {data['token']}"

    def bump_generation(self) -> None:
        previous = self._s3.get_json(self._s3.key("generation.json")) or {"counter": 0}
        token = uuid.uuid4().hex  # two concurrent bumps still write different markers
        data = {"counter": int(previous["counter"]) + 1, "token": token}
        self._s3.put_json(self._s3.key("generation.json"), data)

    def is_retired(self, adapter_id: str) -> bool:
        return self._s3.exists(self._adapter_key(adapter_id, "retired.json"))

    def set_retired(self, adapter_id: str, retired: bool) -> None:
        key = self._adapter_key(adapter_id, "retired.json")
        if retired:
            self._s3.put_json(key, {"retired_at": time.time()})
        else:
            self._s3.client.delete_object(Bucket=self._s3.bucket, Key=key)


def _matches(local: Path, marker: dict) -> bool:
    """A cached download is reusable only if every file matches the marker."""
    for entry in marker["files"]:
        path = local / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
        if _sha256(path) != entry["sha256"]:
            return False
    return True


def open_s3_storage(uri: str, cfg: QLPConfig) -> S3Storage:
    """The registry's storage for an ``s3://`` ``registry.uri`` (cache under ``<home>``)."""
    return S3Storage.from_uri(uri, cfg.s3, cfg.paths.root / "cache" / "s3")


class S3ArtifactStore:
    """Datasets, trajectories and evaluation reports on S3, published atomically by marker."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self._s3 = _MarkedUploads(client, bucket, prefix)

    @classmethod
    def from_uri(cls, uri: str, cfg: S3Config) -> S3ArtifactStore:
        bucket, prefix = parse_s3_uri(uri)
        return cls(make_client(cfg), bucket, prefix)

    def _base(self, kind: str, name: str) -> str:
        if kind not in ARTIFACT_KINDS:
            raise InvalidRequest(f"artifact kind must be one of {ARTIFACT_KINDS}, got {kind!r}")
        return self._s3.key("artifacts", kind, _check_name("artifact name", name))

    def upload(self, kind: str, name: str, path: Path, meta: dict | None = None) -> dict:
        """Upload a file or directory as ``kind/name``; return the marker. Names are immutable."""
        path = Path(path)
        base = self._base(kind, name)
        marker_key, info = f"{base}/published.json", {"kind": kind, "name": name, **(meta or {})}
        if self._s3.exists(marker_key):
            raise InvalidRequest(f"{kind} artifact {name!r} already exists")
        if path.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(path, Path(tmp) / path.name)
                return self._s3.upload_dir(Path(tmp), f"{base}/files", marker_key, info)
        return self._s3.upload_dir(path, f"{base}/files", marker_key, info)

    def names(self, kind: str) -> list[str]:
        if kind not in ARTIFACT_KINDS:
            raise InvalidRequest(f"artifact kind must be one of {ARTIFACT_KINDS}, got {kind!r}")
        prefix = self._s3.key("artifacts", kind) + "/"
        return sorted(n for n in self._s3.list_children(prefix) if self._marker(kind, n))

    def _marker(self, kind: str, name: str) -> dict | None:
        return self._s3.get_json(f"{self._base(kind, name)}/published.json")

    def download(self, kind: str, name: str, dest: Path) -> Path:
        """Download ``kind/name`` into the directory ``dest``; NotFound if never published."""
        marker = self._marker(kind, name)
        if marker is None:
            raise NotFound(f"no published {kind} artifact {name!r}")
        return self._s3.download_marked(marker, f"{self._base(kind, name)}/files", Path(dest))
