"""Capsules: the JSONL instruction/response records every training and evaluation step reads.

One JSON object a line: ``{"instruction", "input", "output", "domain", "validation_score"}``.
Extra fields are kept (``model_extra``) so provenance survives a load/save round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qlp_ray.core.errors import InvalidRequest

logger = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SPLITS = ("train", "heldout")


class Capsule(BaseModel):
    """One instruction/response example of a domain."""

    model_config = ConfigDict(extra="allow")

    instruction: str = Field(description="The task or question, non-empty.")
    input: str = Field("", description="Optional context for the instruction.")
    output: str = Field(description="The reference answer, non-empty.")
    domain: str = Field(description="Skill domain, e.g. 'dataeng'.")
    validation_score: float = Field(
        1.0, ge=0.0, le=1.0, description="Quality score of the answer in [0, 1]."
    )

    @field_validator("instruction", "output")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def load_capsules(path: str | Path) -> list[Capsule]:
    """Read a capsule JSONL file; blank lines are skipped.

    Raises ``InvalidRequest`` naming the file and 1-based line number of the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"capsule file not found: {path}", param="data")
    capsules: list[Capsule] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"{path}:{lineno}: invalid JSON ({exc.msg})", param="data"
                ) from exc
            if not isinstance(record, dict):
                raise InvalidRequest(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}",
                    param="data",
                )
            try:
                capsules.append(Capsule.model_validate(record))
            except ValidationError as exc:
                raise InvalidRequest(f"{path}:{lineno}: {_describe(exc)}", param="data") from exc
    logger.debug("loaded %d capsules from %s", len(capsules), path)
    return capsules


def bundled_domains() -> list[str]:
    """Domains with a bundled train split, sorted."""
    return sorted(p.name.removesuffix(".train.jsonl") for p in SAMPLES_DIR.glob("*.train.jsonl"))


def sample_path(domain: str, split: Literal["train", "heldout"] = "train") -> Path:
    """Path of a bundled sample file; ``InvalidRequest`` for an unknown domain or split."""
    if split not in SPLITS:
        raise InvalidRequest(f"unknown split {split!r}; expected one of {SPLITS}", param="split")
    domains = bundled_domains()
    if domain not in domains:
        raise InvalidRequest(
            f"no bundled samples for domain {domain!r}; available: {', '.join(domains)}",
            param="domain",
        )
    return SAMPLES_DIR / f"{domain}.{split}.jsonl"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the training data hash recorded with adapters)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()
