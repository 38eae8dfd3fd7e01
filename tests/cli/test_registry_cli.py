"""``qlp keys`` and ``qlp adapters`` through typer's CliRunner (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from qlp_ray import cli
from qlp_ray.core.config import load_config
from qlp_ray.registry.store import Registry

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QLP_HOME", str(tmp_path))
    monkeypatch.setattr(cli.state, "_config", None)  # the CLI caches its config per process
    monkeypatch.setattr(cli.state, "config_path", None)
    for console in (cli.console, cli.err_console):  # no wrapping inside asserted messages
        monkeypatch.setattr(console, "_width", 400)
    return tmp_path


def invoke(*args: str):
    cli.state._config = None
    result = runner.invoke(cli.app, list(args))
    return result, " ".join(result.output.split())  # rich wraps long lines


def register(tmp_path: Path, adapter_id: str, seed: int, kind: str | None = None) -> Path:
    src = tmp_path / f"src-{adapter_id}"
    src.mkdir()
    g = torch.Generator().manual_seed(seed)
    save_file(
        {"lora_A.weight": torch.randn(2, 8, generator=g)}, str(src / "adapter_model.safetensors")
    )
    (src / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
    )
    rec = Registry(load_config()).register(
        src,
        adapter_id=adapter_id,
        domain=adapter_id,
        base_model="builtin:tiny-llama",
        metadata={"metrics": {"eval_loss_after": 1.5}, "centroid": [0.1] * 384}
        | ({"kind": kind} if kind else {}),
    )
    return rec.path


def test_keys_init_show_and_refuse_overwrite(home: Path) -> None:
    result, out = invoke("keys", "show")
    assert result.exit_code == 1 and "qlp keys init" in out
    result, out = invoke("keys", "init")
    assert result.exit_code == 0, out
    key_id = out.split("created signing key ")[1].split()[0]
    assert len(key_id) == 16 and str(home / "keys" / "signing_key.pem") in out
    result, out = invoke("keys", "init")
    assert result.exit_code == 1 and "--force" in out
    result, out = invoke("keys", "show")
    assert result.exit_code == 0 and f"key id: {key_id}" in out
    result, out = invoke("keys", "init", "--force")
    assert result.exit_code == 0 and key_id not in out


def test_adapters_list_verify_show(home: Path) -> None:
    assert invoke("keys", "init")[0].exit_code == 0
    result, out = invoke("adapters", "list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    dataeng = register(home, "dataeng", 0)
    register(home, "devops", 1)

    result, _ = invoke("adapters", "list", "--json")
    rows = json.loads(result.stdout)
    assert [(r["id"], r["domain"], r["version"], r["signed"]) for r in rows] == [
        ("dataeng", "dataeng", 1, True),
        ("devops", "devops", 1, True),
    ]
    assert rows[0]["path"] == str(dataeng) and rows[0]["base_model"] == "builtin:tiny-llama"
    assert rows[0]["metrics"] == {"eval_loss_after": 1.5} and "centroid" not in rows[0]

    result, out = invoke("adapters", "verify", "dataeng")
    assert result.exit_code == 0 and "dataeng v1: verified" in out
    result, out = invoke("adapters", "show", "devops")
    assert result.exit_code == 0 and '"domain": "devops"' in out and "<384 floats" in out

    (dataeng / "notes.txt").write_text("hi")
    result, out = invoke("adapters", "verify", "dataeng")
    assert result.exit_code != 0 and "file 'notes.txt' was added" in out
    result, _ = invoke("adapters", "list", "--json")
    assert [r["signed"] for r in json.loads(result.stdout)] == [False, True]
    result, out = invoke("adapters", "list")
    assert result.exit_code == 0 and "notes.txt" in out and "devops" in out

    result, out = invoke("adapters", "verify", "ghost")
    assert result.exit_code != 0 and "unknown adapter 'ghost' (known: dataeng, devops)" in out
    result, out = invoke("adapters", "verify", "devops", "--version", "2")
    assert result.exit_code != 0 and "no version 2" in out


def test_adapters_list_shows_and_filters_kinds(home: Path) -> None:
    assert invoke("keys", "init")[0].exit_code == 0
    register(home, "api", 0)
    register(home, "api-reward", 1, kind="reward_model")
    result, _ = invoke("adapters", "list", "--json")
    assert [(r["id"], r["kind"]) for r in json.loads(result.stdout)] == [
        ("api", "adapter"),
        ("api-reward", "reward_model"),
    ]
    result, _ = invoke("adapters", "list", "--json", "--kind", "adapter")
    assert [r["id"] for r in json.loads(result.stdout)] == ["api"]
    result, out = invoke("adapters", "list", "--kind", "reward_model")
    assert result.exit_code == 0 and "api-reward" in out and "reward_model" in out
