"""A routing report a person opens: the confusion matrix of predicted against labelled
domains, per-domain recall, and the router's facts, as ``report.html`` (self-contained)
plus ``confusion.png``. ``qlp router train`` writes one for the rows it trained on.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def confusion_matrix(labels: Sequence[str], truth: Sequence[str], predicted: Sequence[str]):
    """Counts ``[i][j]`` of rows labelled ``labels[i]`` routed to ``labels[j]``."""
    index = {d: i for i, d in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t]][index[p]] += 1
    return matrix


def plot_confusion(labels: Sequence[str], matrix: list[list[int]], dest: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.0 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=100)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("routed to")
    ax.set_ylabel("labelled")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            color = "white" if count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color)
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


def write_routing_report(
    dest_dir: str | Path,
    labels: Sequence[str],
    truth: Sequence[str],
    predicted: Sequence[str],
    *,
    title: str,
    facts: dict[str, Any],
) -> Path:
    """``report.html`` + ``confusion.png`` in ``dest_dir``; returns the HTML path."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(labels, truth, predicted)
    png = plot_confusion(labels, matrix, dest / "confusion.png", title)
    n = len(truth)
    accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / n if n else 0.0
    recall_rows = []
    for i, label in enumerate(labels):
        total = sum(matrix[i])
        recall = f"{matrix[i][i] / total:.3f}" if total else ""
        recall_rows.append(f"<tr><td>{html.escape(label)}</td><td>{total}</td>"
                           f"<td>{recall}</td></tr>")  # fmt: skip
    fact_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                        for k, v in facts.items())  # fmt: skip
    data = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}
td,th{{padding:2px 10px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{n} rows, accuracy <b>{accuracy:.3f}</b></p>
<img alt="confusion matrix" src="data:image/png;base64,{data}">
<h2>Recall per domain</h2>
<table><tr><th>domain</th><th>rows</th><th>recall</th></tr>{"".join(recall_rows)}</table>
<h2>Router</h2><table>{fact_rows}</table>
</body></html>
"""
    out = dest / "report.html"
    out.write_text(page, encoding="utf-8")
    logger.info("routing report written to %s", out)
    return out


__all__ = ["confusion_matrix", "plot_confusion", "write_routing_report"]
