"""Training data over HTTP (trainer or admin key): check capsule rows, upload a training file.

``POST /v1/datasets/validate``  ``{"rows": [capsule, ...], "method"?}`` → every row's checks
                                (invalid, duplicate, too short, PII: :mod:`qlp_ray.data.quality`;
                                with ``method``, in that method's data shape:
                                :mod:`qlp_ray.train.method_data`),
                                counts per flag and domain, and the records the trainer
                                needs (``min_records``) and ``evaluation.min_train_examples``
``POST /v1/files``              ``{"purpose": "fine-tune", "filename", "rows"}`` → the rows
                                written as JSONL under the first job data directory
                                (``<home>/data/uploads/<file id>.jsonl`` by default; the
                                id is ``file-`` + SHA-256 of the content); its ``id`` (or
                                ``path``) is what ``/v1/fine-tuning/jobs`` takes as
                                ``training_file``. 400 names the first invalid row.

Rows travel as JSON objects (the UI builds them in a form), so one body limit
(``serve.max_body_bytes``) bounds an upload like any other request.
"""

# No `from __future__ import annotations`: FastAPI must see the real types.
import asyncio
import hashlib
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.quality import check_rows
from qlp_ray.serve.http.auth import require_trainer
from qlp_ray.serve.http.routes_jobs import data_dirs

router = APIRouter(prefix="/v1", dependencies=[Depends(require_trainer)])
MAX_ROWS = 100_000


class DatasetRows(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[Any] = Field(max_length=MAX_ROWS, description="Capsule objects.")
    method: str | None = Field(None, description="Check in this training method's data shape.")


class FileUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: Literal["fine-tune"] = Field("fine-tune", description="What the file is for.")
    filename: str = Field("dataset.jsonl", min_length=1, max_length=128, description="Label.")
    rows: list[Any] = Field(min_length=1, max_length=MAX_ROWS, description="Capsule objects.")
    method: str | None = Field(None, description="The rows are in this method's data shape.")


def _cfg(request: Request) -> QLPConfig:
    return request.app.state.gateway.cfg


def report(cfg: QLPConfig, rows: list[Any], method: str | None = None) -> dict[str, Any]:
    """The quality report of ``rows`` with this deployment's thresholds (in ``method``'s data
    shape when given; 400 names an unknown method)."""
    recommended = cfg.evaluation.min_train_examples
    if method is None:
        return check_rows(rows, recommended_records=recommended).to_dict()
    from qlp_ray.train.method_data import check_method_rows
    from qlp_ray.train.methods import get_method

    return check_method_rows(get_method(method), rows, recommended)


def save_upload(cfg: QLPConfig, body: FileUpload) -> dict[str, Any]:
    """Write valid rows as JSONL in the uploads directory; 400 names the first bad row."""
    checked = report(cfg, body.rows, body.method)
    for row in checked["rows"]:
        if not row["valid"]:
            i = row["index"]
            raise InvalidRequest(f"row {i + 1}: {'; '.join(row['errors'])}", param=f"rows.{i}")
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in body.rows)
    # named by its content: the same rows are the same file; nothing is overwritten
    file_id = f"file-{hashlib.sha256(text.encode()).hexdigest()[:32]}"
    folder = data_dirs(cfg)[0] / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{file_id}.jsonl"
    if not path.is_file():
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return {"id": file_id, "object": "file", "purpose": body.purpose, "filename": body.filename,
            "path": str(path), "bytes": len(text.encode()), "rows": len(body.rows),
            "domains": checked["domains"], "created_at": int(time.time())}  # fmt: skip


@router.post("/datasets/validate")
async def validate_dataset(body: DatasetRows, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(report, _cfg(request), body.rows, body.method)


@router.post("/files")
async def upload_file(body: FileUpload, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(save_upload, _cfg(request), body)


__all__ = ["FileUpload", "report", "router", "save_upload"]
