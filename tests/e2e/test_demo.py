"""`qlp demo` end to end in a subprocess: real Ray Train, registry, Ray Serve, HTTP.

Two domains and short training keep it to a couple of minutes; `make demo` runs all five.
The demo joins the session's Ray (``RAY_ADDRESS``) instead of starting its own, and serves
on the session's Serve port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.ray_start import SERVE_PORT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_end_to_end(tmp_path: Path, qlp_home: Path, ray_session):
    summary_path = tmp_path / "summary.json"
    env = dict(os.environ)
    env.update(
        {
            "QLP_HOME": str(qlp_home),  # reuses the session's tiny model and keys
            "RAY_ADDRESS": ray_session.address,
            "QLP_SERVE__PORT": str(SERVE_PORT),
            "QLP_DEMO__DOMAINS": "[devops, frontend]",
            "QLP_DEMO__MAX_TOKENS": "8",
        }
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlp_ray",
            "demo",
            "--steps",
            "20",
            "--summary-json",
            str(summary_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert {a["domain"] for a in summary["adapters"]} == {"devops", "frontend"}
    for a in summary["adapters"]:
        assert a["signed"] is True
        assert a["eval_loss_after"] < a["eval_loss_before"]
    assert summary["requests"]["sent"] == summary["requests"]["ok"] > 0
    assert summary["routing_accuracy"] >= 0.9
    assert summary["latency_ms"]["p50"] > 0
    assert "demo passed" in proc.stdout
