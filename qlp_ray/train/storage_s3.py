"""pyarrow's S3 filesystem for Ray Train / Tune storage, without keys in its pickle.

Ray pickles a ``RunConfig``'s ``storage_filesystem`` to its workers and into the run's
saved state (``tuner.pkl`` / trainer state in the storage itself, the GCS); a plain
``pyarrow.fs.S3FileSystem`` pickles its access and secret key with it. This subclass
pickles the ``s3`` section with its secrets as markers instead, and each process that
unpickles it takes the keys from its own environment or the deploying process's secrets
file (:mod:`qlp_ray.core.config.secrets`).
"""

from __future__ import annotations

from typing import Any

from pyarrow import fs

from qlp_ray.core.config.secrets import resolve_secrets


class KeylessS3FileSystem(fs.S3FileSystem):
    """``S3FileSystem(**options)`` with the keys of ``s3`` (a portable ``s3`` section)."""

    def __init__(self, options: dict[str, Any], s3: dict[str, Any]) -> None:
        self._portable = (options, s3)
        resolved = resolve_secrets({"s3": s3})["s3"]
        keys: dict[str, Any] = {}
        if resolved.get("access_key_id") and resolved.get("secret_access_key"):
            keys = {"access_key": resolved["access_key_id"],
                    "secret_key": resolved["secret_access_key"]}  # fmt: skip
        super().__init__(**options, **keys)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return type(self), self._portable


__all__ = ["KeylessS3FileSystem"]
