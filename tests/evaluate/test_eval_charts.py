"""`qlp eval` reports: report.html with the verdict, table and embedded chart; metrics.png."""

from __future__ import annotations

from qlp_ray.core.config import EvaluationConfig
from qlp_ray.evaluate.charts import plot_metrics, write_eval_report
from qlp_ray.evaluate.report import build_report


def test_report_html_and_png(tmp_path):
    metrics = {"exact_match": 0.4, "token_f1": 0.6, "bleu": 30.0, "rougeL": 0.5,
               "perplexity": 8.0, "p50_ms": 12.0, "p95_ms": 20.0, "p99_ms": 31.0}  # fmt: skip
    base = {"exact_match": 0.1, "token_f1": 0.3, "bleu": 10.0, "rougeL": 0.2, "perplexity": 20.0,
            "p50_ms": 10.0, "p95_ms": 18.0, "p99_ms": 25.0}  # fmt: skip
    report = build_report(metrics, EvaluationConfig(), baseline=base)
    out = write_eval_report(tmp_path / "r", report, target="api", domain="api",
                            dataset="/x/api.heldout.jsonl", baseline_metrics=base)  # fmt: skip
    page = out.read_text()
    assert "api on api (api.heldout.jsonl)" in page and f"grade <b>{report.grade}</b>" in page
    assert "<td>token_f1</td><td>0.6</td><td>0.3</td><td>+0.3</td>" in page
    assert 'src="data:image/png;base64,' in page
    png = tmp_path / "r" / "metrics.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


def test_nothing_measured_draws_nothing(tmp_path):
    assert plot_metrics({"perplexity": 3.0}, None, tmp_path / "m.png", "t") is None
    assert not (tmp_path / "m.png").exists()
