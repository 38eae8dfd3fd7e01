"""`qlp router train` and `qlp router eval --json` on a small real-text file (real MiniLM)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

TITLES = {
    "dataeng": [
        "Spark job fails on shuffle",
        "Airflow DAG stuck in queued",
        "dbt model slow",
        "Kafka consumer lag grows",
        "Parquet schema mismatch in Hive",
    ],
    "devops": [
        "Helm chart upgrade fails",
        "Terraform plan shows drift",
        "Pod in CrashLoopBackOff",
        "Ansible playbook hangs on ssh",
        "GitHub Actions runner out of disk",
    ],
    "frontend": [
        "React hook runs twice",
        "CSS grid overflow on mobile",
        "Vue component not reactive",
        "Vite HMR broken",
        "Button focus ring missing",
    ],
}


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "titles.jsonl"
    rows = []
    for domain, titles in TITLES.items():
        for i, t in enumerate(titles):
            rows.append(json.dumps({"text": t, "domain": domain, "source": f"org/r{i}#{i}"}))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture()
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QLP_ROUTER__USE_SAMPLES", "false")
    # 4 fine-tunes of 120 steps take minutes on 2 cores; the steps' effect is tested in
    # tests/route/test_router_finetune.py
    monkeypatch.setenv("QLP_ROUTER__FINETUNE_STEPS", "15")
    from qlp_ray import cli

    cli.state._config = None  # reload config with this test's environment
    yield CliRunner()
    cli.state._config = None


@pytest.mark.slow
def test_router_train_then_eval_json(runner, data_file, tmp_path, monkeypatch):
    from qlp_ray.cli import app

    out = tmp_path / "router"
    res = runner.invoke(app, ["router", "train", "--data", str(data_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fine-tune 4/4 (final fit)" in res.output  # the progress bar reached the last fit
    assert (out / "gating.safetensors").is_file() and (out / "router.json").is_file()
    meta = json.loads((out / "router.json").read_text())
    assert meta["labels"] == ["dataeng", "devops", "frontend"] and meta["lexical_buckets"]
    assert meta["head"] == "knn"  # router.learned_head's default reaches the trained router
    # the fine-tuned embedder ships with the router, which names it
    assert meta["embedding_model"] == "embedder" and (out / "embedder" / "config.json").is_file()
    # the report: confusion matrix of the rows it trained on
    page = (out / "report" / "report.html").read_text()
    assert "15 rows, accuracy" in page and (out / "report" / "confusion.png").is_file()

    # keys of `eval --json` (the embedder fine-tuning inside every fold is tested elsewhere)
    monkeypatch.setenv("QLP_ROUTER__FINETUNE_EMBEDDER", "false")
    from qlp_ray import cli

    cli.state._config = None

    res = runner.invoke(app, ["router", "eval", "--data", str(data_file), "--json", "--folds", "3"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.strip().splitlines()]
    assert [r["mode"] for r in rows] == ["centroid", "learned"]
    for r in rows:
        assert {"mode", "accuracy", "macro_f1", "coverage", "accuracy_above_threshold"} <= set(r)
        assert 0 <= r["coverage"] <= 1
    # an easy, separable set: both modes route most held-out titles right
    assert rows[1]["accuracy"] >= 0.7

    bad = runner.invoke(app, ["router", "eval", "--data", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code != 0 and "not found" in bad.output
