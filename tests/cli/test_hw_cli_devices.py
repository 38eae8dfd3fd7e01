"""``qlp devices`` on this machine: the CPU and the OpenVINO CPU device, nothing invented."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from qlp_ray.cli import app
from qlp_ray.hardware.discovery import classify_openvino_device, read_cpuinfo


def test_devices_json_lists_only_real_devices() -> None:
    import openvino
    import torch

    result = CliRunner().invoke(app, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("[") :])
    classes = [r["class"] for r in rows]
    _, flags = read_cpuinfo()
    cpu_rows = [r for r in rows if r["class"] in ("cpu", "pcore", "ecore")]
    assert cpu_rows and all(r["avx512"] == ("avx512f" in flags) for r in cpu_rows)
    ov = [n for n in openvino.Core().available_devices if classify_openvino_device(n)]
    assert sorted(r["kind"] for r in rows if r["backend"] == "openvino") == sorted(
        f"openvino:{n}" for n in ov
    )
    assert "openvino:CPU" in [r["kind"] for r in rows]
    assert ("cuda" in classes) == torch.cuda.is_available()
    for r in cpu_rows:
        assert 0.0 <= r["utilization"] <= 1.0 and r["queue"] is None


def test_devices_table() -> None:
    result = CliRunner().invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    assert "AVX-512" in result.stdout and "ov_cpu" in result.stdout
