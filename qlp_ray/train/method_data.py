"""What a training method's rows must look like, for people building a data set: the
method table as JSON (``GET /v1/fine-tuning/methods``) and the quality report of rows in
the method's data shape (``POST /v1/datasets/validate`` with ``method``).

Instruction capsules get the capsule checks of :mod:`qlp_ray.data.quality`; preference
pairs and prompts get the method's own row check (:func:`qlp_ray.train.methods.check_row`,
the one ``qlp train`` runs), duplicates and PII, in the same report shape. Pure: no torch,
no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.quality import (
    MIN_TRAIN_RECORDS,
    DatasetReport,
    RowReport,
    check_rows,
    fingerprint,
    pii_kinds,
)
from qlp_ray.train.methods import INSTRUCTIONS, METHODS, REWARD_KINDS, MethodSpec, check_row


def shape_fields(spec: MethodSpec) -> list[str]:
    """The text fields of a row of ``spec``'s shape (a form's inputs; ``domain`` is
    optional outside capsules and travels along unused by the trainer)."""
    if spec.data is INSTRUCTIONS:
        return ["instruction", "input", "output", "domain"]
    return [*spec.data.required, *spec.data.one_of[:1], "domain"]


def method_info(spec: MethodSpec, gpu: bool) -> dict[str, Any]:
    """One method as the API lists it: data shape, needed options, metric, availability."""
    needs_gpu = spec.peft == "qlora"
    return {
        "name": spec.name,
        "summary": spec.summary,
        "data_shape": spec.data.name,
        "data": spec.data.description,
        "fields": shape_fields(spec),
        "required_fields": list(spec.data.required),
        "one_of_fields": list(spec.data.one_of),
        "needs_reward": spec.needs_reward,
        "needs_teacher": spec.needs_teacher,
        "accepts_parent": spec.accepts_parent,
        "sft_family": spec.peft is not None,
        "metric": spec.metric,
        "higher_is_better": spec.higher,
        "registers": spec.kind,
        "needs_gpu": needs_gpu,
        "available": spec.available and (gpu or not needs_gpu),
    }


def methods_listing(gpu: bool) -> dict[str, Any]:
    """Every method of :data:`METHODS` (``gpu``: the cluster has a CUDA GPU)."""
    return {
        "object": "list",
        "data": [method_info(m, gpu) for m in METHODS.values()],
        "reward_kinds": list(REWARD_KINDS),
        "gpu": gpu,
    }


def check_method_rows(
    spec: MethodSpec, rows: Sequence[Any], recommended_records: int = 200
) -> dict[str, Any]:
    """The quality report (``dataset.report``) of ``rows`` in ``spec``'s data shape."""
    if spec.data is INSTRUCTIONS:
        out = check_rows(rows, recommended_records=recommended_records).to_dict()
        return {**out, "data_shape": spec.data.name, "method": spec.name}
    reports: list[RowReport] = []
    seen: dict[str, int] = {}
    domains: dict[str, int] = {}
    fields = shape_fields(spec)
    for i, row in enumerate(rows):
        rep = RowReport(i)
        reports.append(rep)
        try:
            check_row(spec.data, row, f"row {i + 1}")
        except InvalidRequest as exc:
            rep.errors.append(str(exc).removeprefix(f"row {i + 1}: "))
            continue
        texts = [str(row.get(f) or "") for f in fields]
        key = fingerprint(*texts)
        if key in seen:
            rep.duplicate_of = seen[key]
        else:
            seen[key] = i
        if isinstance(row.get("domain"), str) and row["domain"]:
            domains[row["domain"]] = domains.get(row["domain"], 0) + 1
        rep.pii = pii_kinds(" ".join(texts))
    out = DatasetReport(reports, domains, MIN_TRAIN_RECORDS, recommended_records).to_dict()
    return {**out, "data_shape": spec.data.name, "method": spec.name}


__all__ = ["check_method_rows", "method_info", "methods_listing", "shape_fields"]
