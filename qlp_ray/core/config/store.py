"""Where things are kept: ``registry`` (signed adapters, read by ``qlp_ray.registry``),
``store`` (the feedback / request database, read by ``qlp_ray.store``) and ``s3`` (the
S3-compatible endpoint both may use)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from qlp_ray.core.config.base import Section


class RegistryConfig(Section):
    uri: str = Field("", description="Adapter store: local dir or s3://bucket/prefix ('' = home).")
    require_signature: bool = Field(True, description="Refuse to load unsigned adapters.")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Extra trusted Ed25519 public keys (PEM files)."
    )


class StoreConfig(Section):
    url: str = Field(
        "",
        description="Feedback store URL ('' = sqlite <home>/feedback.db; postgresql://... ; "
        "the QLP_DB_URL environment variable wins).",
        json_schema_extra={"secret": True},  # a PostgreSQL URL may hold a password
    )
    sqlite_synchronous: Literal["NORMAL", "FULL", "EXTRA"] = Field(
        "FULL", description="SQLite synchronous pragma (FULL: committed rows survive power loss)."
    )
    busy_timeout_ms: int = Field(10000, ge=0, description="SQLite wait for a locked database.")
    request_log_commit: Literal["durable", "background", "inline"] = Field(
        "durable",
        description="durable: a reply (or error reply of an A/B-assigned request) goes out "
        "only after its row is committed; concurrent requests share one commit (group "
        "commit). background: LOSSY opt-out, the reply goes out first and rows are committed "
        "after it, so a crash loses rows whose request id clients already hold. inline: each "
        "reply commits its own row (no sharing).",
    )
    feedback_wait_s: float = Field(
        1.0,
        ge=0.0,
        le=30.0,
        description="How long POST /v1/feedback waits for a request id not yet in the store "
        "(another gateway replica may still be committing its row) before answering 404.",
    )
    audit: bool = Field(
        True,
        description="Record sign/verify/promote/rollback events and refuse rolled-back pointers.",
    )


class S3Config(Section):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto, ...); None = AWS."
    )
    region: str = Field("us-east-1", description="S3 region.")
    access_key_id: str | None = Field(
        None,
        description="Access key; None = boto3's chain (env, ~/.aws, IAM role).",
        json_schema_extra={"secret": True},
    )
    secret_access_key: str | None = Field(
        None, description="Secret key; None = boto3's chain.", json_schema_extra={"secret": True}
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path", description="Bucket addressing style (path works with local endpoints)."
    )
    max_attempts: int = Field(3, ge=1, description="boto3 retries per request.")
    artifacts_uri: str = Field(
        "", description="s3://bucket/prefix for datasets and reports ('' = keep them local)."
    )
