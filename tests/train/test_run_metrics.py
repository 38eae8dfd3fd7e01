"""A run's reported metrics file and its loss curve (CSV + PNG), and the training estimate."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from qlp_ray.train.estimate import measured_throughput, steps_for_epochs, training_estimate
from qlp_ray.train.run_metrics import (
    append_metrics,
    drop_metrics_after,
    loss_series,
    progress_of,
    read_metrics,
    write_loss_curve,
)


def test_series_progress_and_curve_files(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 0, "eval_loss": 3.0}, {"step": 1, "loss": 2.5, "learning_rate": 0.002},
             {"step": 2, "loss": 2.0, "learning_rate": 0.001}, {"step": 2, "train_loss": 2.2},
             {"step": 2, "eval_loss": 2.4}]  # fmt: skip
    for line in lines:
        append_metrics(path, line)
    with path.open("a") as fh:
        fh.write('{"step": 3, "loss"')  # a line still being written
    records = read_metrics(path)
    assert len(records) == 5
    series = loss_series(records)
    assert series["train"] == [{"step": 1.0, "loss": 2.5}, {"step": 2.0, "loss": 2.0}]
    assert series["heldout"] == [{"step": 0.0, "loss": 3.0}, {"step": 2.0, "loss": 2.4}]
    assert progress_of(records, 4) == {"step": 2, "total_steps": 4, "fraction": 0.5,
                                       "learning_rate": 0.001}  # fmt: skip
    csv_path, png_path = write_loss_curve(tmp_path, title="run")
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["split", "step", "loss"] and ["heldout", "2", "2.4"] in rows
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 5000


def test_ppo_curve_adds_reward_and_kl(tmp_path):
    """PPO's per-step stats: the loss rows plus reward and KL rows, a two-panel PNG."""
    for step, (loss, reward, kl) in enumerate([(0.3, 0.5, 0.0), (0.2, 0.7, 0.4)], start=1):
        append_metrics(tmp_path / "metrics.jsonl",
                       {"step": step, "loss": loss, "reward": reward, "kl": kl})  # fmt: skip
    csv_path, png_path = write_loss_curve(tmp_path, extra_keys=("reward", "kl", "absent"))
    rows = list(csv.reader(csv_path.open()))
    assert rows == [["split", "step", "value"], ["train", "1", "0.3"], ["train", "2", "0.2"],
                    ["reward", "1", "0.5"], ["reward", "2", "0.7"], ["kl", "1", "0.0"],
                    ["kl", "2", "0.4"]]  # fmt: skip
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_loss_no_curve(tmp_path):
    assert read_metrics(tmp_path / "missing.jsonl") == []
    assert write_loss_curve(tmp_path) is None


def test_steps_from_epochs_and_the_estimate():
    assert steps_for_epochs(1, 17, 8) == 3 and steps_for_epochs(2.5, 100, 8, workers=2) == 16
    with pytest.raises(ValueError, match="positive"):
        steps_for_epochs(0, 10, 8)
    est = training_estimate([100, 300], steps=3, batch_size=8, workers=1, tokens_per_s=400.0,
                            price_per_mtok=0.05)  # fmt: skip
    assert est["tokens"] == 4800 and est["seconds"] == 12.0 and est["epochs"] == 12.0
    assert est["cost"] == pytest.approx(4800 * 0.05 / 1e6)
    assert training_estimate([10], steps=1, batch_size=1, workers=1, tokens_per_s=None,
                             price_per_mtok=1.0)["seconds"] is None  # fmt: skip


def test_measured_throughput_is_the_newest_run_on_the_base():
    def rec(adapter, version, base, tps, created):
        return SimpleNamespace(adapter_id=adapter, version=version, base_model=base,
                               metadata={"metrics": {"tokens_per_s": tps},
                                         "created_at": created})  # fmt: skip

    records = [rec("a", 1, "b1", 100.0, "2026-01-01T00:00:00"),
               rec("a", 2, "b1", 200.0, "2026-01-02T00:00:00"),
               rec("c", 1, "b2", 900.0, "2026-01-03T00:00:00"),
               rec("d", 1, "b1", None, "2026-01-04T00:00:00")]  # fmt: skip
    assert measured_throughput(records, "b1")["tokens_per_s"] == 200.0
    assert measured_throughput(records, "b3") is None


def test_resumed_run_drops_the_lines_after_its_checkpoint(tmp_path):
    """A run resumed from the step-20 checkpoint logs steps 21.. again: the first attempt's
    lines after step 20 go, so every step appears once."""
    path = tmp_path / "metrics.jsonl"
    for step in (0, 10, 20, 22, 24):
        append_metrics(path, {"step": step, "loss": 1.0 / (step + 1)})
    drop_metrics_after(path, 20)
    assert [r["step"] for r in read_metrics(path)] == [0, 10, 20]
    append_metrics(path, {"step": 22, "loss": 0.5})
    assert [r["step"] for r in read_metrics(path)] == [0, 10, 20, 22]
