"""Score the live router on a labelled file: accuracy, macro-F1, coverage and the confusion
matrix of labelled against routed domains (``POST /v1/admin/routes/evaluate``).

Rows are the routing data format (``{"text"|"instruction", "domain"}``, as
:func:`qlp_ray.route.evaluation.load_routing_data` reads); a decision the router sends to
the fallback is the column ``fallback``. Pure: the gateway asks the router, this scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.route.evaluation import classification_metrics
from qlp_ray.route.report import confusion_matrix

FALLBACK = "fallback"


def labelled_rows(rows: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Texts and labels of ``rows``; 400 naming the first row without text or domain."""
    texts, truth = [], []
    for i, row in enumerate(rows):
        text = row.get("text") or row.get("instruction") if isinstance(row, dict) else None
        domain = row.get("domain") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip() or not isinstance(domain, str):
            raise InvalidRequest(f"row {i + 1}: needs a non-empty 'text' (or 'instruction') "
                                 "and a 'domain'", param=f"rows.{i}")  # fmt: skip
        texts.append(text)
        truth.append(domain)
    if not texts:
        raise InvalidRequest("no rows to evaluate", param="rows")
    return texts, truth


def routed_label(decision: dict[str, Any]) -> str:
    """The domain a decision routed to, or ``fallback``."""
    if decision.get("fallback") or not decision.get("domain"):
        return FALLBACK
    return str(decision["domain"])


def score(truth: Sequence[str], decisions: Sequence[dict[str, Any]], threshold: float) -> dict:
    """Accuracy (a fallback counts as wrong), macro-F1, coverage, per-domain recall and the
    confusion matrix ``[labelled][routed]``."""
    predicted = [routed_label(d) for d in decisions]
    labels = sorted(set(truth) | (set(predicted) - {FALLBACK}))
    columns = [*labels, FALLBACK] if FALLBACK in predicted else list(labels)
    index = {d: i for i, d in enumerate(columns)}
    y_true = np.array([index[t] for t in truth])
    y_pred = np.array([index[p] for p in predicted])
    confidence = np.array([float(d.get("confidence") or 0.0) for d in decisions])
    metrics = classification_metrics(y_true, y_pred, confidence, threshold, len(labels))
    full = confusion_matrix(columns, [*truth], predicted)
    recall = {}
    for d in labels:
        n = sum(1 for t in truth if t == d)
        if n:
            recall[d] = full[index[d]][index[d]] / n
    return {
        **metrics,
        "fallbacks": predicted.count(FALLBACK),
        "labels": labels,
        "columns": columns,
        "matrix": [full[index[d]] for d in labels],
        "recall": recall,
    }


__all__ = ["FALLBACK", "labelled_rows", "routed_label", "score"]
