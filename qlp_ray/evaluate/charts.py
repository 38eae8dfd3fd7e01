"""An evaluation as a report a person opens: ``report.html`` (one self-contained file:
verdict, metric table with the baseline, failures, recommendations, the charts) and the
charts as ``metrics.png`` beside it.

Charts: the quality metrics on 0–1 (BLEU divided by 100, as in the score) for the model and
its baseline, and the latency percentiles (ms). Nothing is drawn that was not measured.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

from qlp_ray.evaluate.report import SCORE_SCALE, EvaluationReport

logger = logging.getLogger(__name__)

QUALITY = ("exact_match", "token_f1", "bleu", "rouge1", "rouge2", "rougeL", "f1_macro")
LATENCY = ("p50_ms", "p95_ms", "p99_ms")


def plot_metrics(
    metrics: dict[str, float], baseline: dict[str, float] | None, dest: Path, title: str
) -> Path | None:
    """A PNG with the quality metrics (model vs baseline) and the latency percentiles;
    None when neither was measured."""
    quality = [m for m in QUALITY if m in metrics]
    latency = [m for m in LATENCY if m in metrics]
    panels = [p for p in (quality, latency) if p]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax, names in zip(axes[0], panels, strict=True):
        scale = [SCORE_SCALE.get(m, 1.0) if names is quality else 1.0 for m in names]
        xs = range(len(names))
        ours = [metrics[m] / s for m, s in zip(names, scale, strict=True)]
        width = 0.4 if baseline else 0.8
        ax.bar([x - width / 2 if baseline else x for x in xs], ours, width, label="model")
        if baseline:
            base = [baseline.get(m, float("nan")) / s for m, s in zip(names, scale, strict=True)]
            ax.bar([x + width / 2 for x in xs], base, width, label="baseline")
            ax.legend()
        ax.set_xticks(list(xs), [n.replace("_ms", "") for n in names], rotation=30)
        ax.set_ylabel("score (0-1)" if names is quality else "latency (ms)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return dest


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def write_eval_report(
    dest_dir: str | Path,
    report: EvaluationReport,
    *,
    target: str,
    domain: str,
    dataset: str,
    baseline_metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``report.html`` (+ ``metrics.png``) into ``dest_dir``; return the HTML path."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    title = f"{target} on {domain} ({Path(dataset).name})"
    png = plot_metrics(report.metrics, baseline_metrics, dest / "metrics.png", title)
    rows = []
    for name, value in report.metrics.items():
        base = (baseline_metrics or {}).get(name)
        delta = report.comparison.deltas.get(name) if report.comparison else None
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(value)}</td>"
                    f"<td>{'' if base is None else _fmt(base)}</td>"
                    f"<td>{'' if delta is None else f'{delta.delta:+.4g}'}</td></tr>")  # fmt: skip
    verdict = "PASS" if report.passed else "FAIL"
    score = "" if report.score is None else f", score {report.score:.3f}"
    items = [f"<li>{html.escape(f)}</li>" for f in report.failures]
    items += [f"<li>{html.escape(r.code)}: {html.escape(r.message)}</li>"
              for r in report.recommendations]  # fmt: skip
    image = ""
    if png is not None:
        data = base64.b64encode(png.read_bytes()).decode()
        image = f'<img alt="metrics" src="data:image/png;base64,{data}">'
    comparison = (f"<p>vs baseline: <b>{html.escape(report.comparison.verdict)}</b></p>"
                  if report.comparison else "")  # fmt: skip
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>grade <b>{html.escape(report.grade)}</b>{score}: <b>{verdict}</b></p>{comparison}
{image}
<table><tr><th>metric</th><th>value</th><th>baseline</th><th>change</th></tr>
{"".join(rows)}</table>
<ul>{"".join(items)}</ul>
</body></html>
"""
    out = dest / "report.html"
    out.write_text(page, encoding="utf-8")
    logger.info("evaluation report written to %s", out)
    return out


__all__ = ["plot_metrics", "write_eval_report"]
