"""Where Ray Train and Ray Tune runs keep checkpoints and results (``train.storage_uri``).

On one machine ``<home>/runs``; on a cluster the workers of one run sit on several nodes,
so Ray needs storage they all reach: ``s3://bucket/prefix`` (the ``s3`` section's endpoint
and keys, through pyarrow's S3 filesystem, whose pickle carries no key) or a path every
node mounts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from qlp_ray.core.config import QLPConfig, portable_config
from qlp_ray.registry.s3 import parse_s3_uri


def run_storage(cfg: QLPConfig) -> tuple[str, Any | None]:
    """``(storage_path, storage_filesystem)`` for a Ray ``RunConfig``."""
    uri = cfg.train.storage_uri
    if not uri:
        cfg.paths.runs.mkdir(parents=True, exist_ok=True)
        return str(cfg.paths.runs), None
    if not uri.startswith("s3://"):
        return uri, None  # a shared filesystem path
    from qlp_ray.train.storage_s3 import KeylessS3FileSystem  # lazy: pyarrow

    bucket, prefix = parse_s3_uri(uri)
    s3 = cfg.s3
    options: dict[str, Any] = {"region": s3.region}
    if s3.endpoint_url:
        endpoint = urlparse(s3.endpoint_url)
        options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
    # Ray pickles the filesystem into its workers and the run's saved state: the keys
    # travel as markers, resolved where it is unpickled (core/config/secrets.py)
    portable = portable_config(cfg, "train-storage", section="s3")["s3"]
    return f"{bucket}/{prefix}".rstrip("/"), KeylessS3FileSystem(options, portable)


__all__ = ["run_storage"]
