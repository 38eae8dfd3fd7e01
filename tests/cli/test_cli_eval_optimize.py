"""`qlp eval` and `qlp optimize` on a small built-in tiny model, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qlp_ray.cli import app, state
from tests.helpers.tiny_lm import SMALL_BUILTIN


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    home = tmp_path_factory.mktemp("eval_cli_home")
    cfg = {
        "paths": {"home": str(home)},
        "model": {"tiny": SMALL_BUILTIN},
        "evaluation": {"max_new_tokens": 4},
        "optimize": {"eval_samples": 4, "calibration_samples": 4, "repeats": 1},
    }
    path = home / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _invoke(cfg_file, *args):
    state._config = None  # the CLI caches its config per process
    result = CliRunner().invoke(app, ["--config", str(cfg_file), *args])
    assert result.exit_code == 0, result.output
    return result.stdout  # logs go to stderr


def _json(output: str):
    return json.loads(output)


def test_eval_run_records_and_leaderboard_lists(cfg_file):
    out = _json(_invoke(cfg_file, "eval", "run", "--domain", "api", "--limit", "3", "--json"))
    assert out["target"] == "base" and out["grade"] in "ABCDF"
    assert out["metrics"]["n_examples"] == 3.0
    assert out["metrics"]["perplexity"] > 1.0
    assert out["leaderboard_id"] == 1
    report = Path(out["report_html"])  # the report with its chart, beside the metrics PNG
    assert "grade <b>" in report.read_text() and (report.parent / "metrics.png").is_file()
    board = _json(_invoke(cfg_file, "eval", "leaderboard", "--json"))
    assert [(e["adapter_id"], e["domain"]) for e in board] == [("base", "api")]
    table = _invoke(cfg_file, "eval", "leaderboard", "--metric", "perplexity")
    assert "base" in table and "api" in table


def test_optimize_magnitude_50(cfg_file, tmp_path):
    out = _json(
        _invoke(
            cfg_file,
            "optimize",
            "run",
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--output",
            str(tmp_path / "pruned"),
            "--json",
        )
    )
    assert out["optimized"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert out["size_ratio"] < 0.9
    assert out["perplexity_change"] != 0.0
    assert (tmp_path / "pruned" / "model.safetensors").is_file()
    assert (
        json.loads((tmp_path / "pruned" / "optimization.json").read_text())["method"] == "magnitude"
    )


def test_optimize_rejects_bad_sparsity(cfg_file):
    state._config = None
    result = CliRunner().invoke(
        app,
        [
            "--config",
            str(cfg_file),
            "optimize",
            "run",
            "--method",
            "magnitude",
            "--sparsity",
            "0.95",
        ],
    )
    assert result.exit_code == 1
    assert "between 0.1 and 0.9" in result.output
