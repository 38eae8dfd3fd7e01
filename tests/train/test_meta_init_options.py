"""``--init`` validation (no Ray): which methods take a meta-init, the CLI and REST errors,
the inputs hash that names a meta-init, and the refusal without two source domains.

(The run itself: tests/train/test_meta_init_ray.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp_ray import cli
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.capsules import sample_path
from qlp_ray.train.meta_init import ReptileOptions
from qlp_ray.train.methods import METHODS, check_options, methods_table, parse_init

runner = CliRunner()
API = str(sample_path("api", "train"))


def test_only_sft_and_adalora_take_a_meta_init():
    assert [m.name for m in METHODS.values() if m.accepts_init] == ["sft", "adalora"]
    assert {r["method"]: r["init"] for r in methods_table()}["adalora"].startswith("base, meta")
    for name in ("sft", "adalora"):
        for init in ("base", "meta", "meta-init@2", "meta-init"):
            check_options(METHODS[name], init=init)
    for name in ("qlora", "dpo", "ppo", "grpo", "rloo", "reward", "distill"):
        spec = METHODS[name]
        needs = {"reward": "json"} if spec.needs_reward else {}
        needs |= {"teacher": "base"} if spec.needs_teacher else {}
        check_options(spec, init="base", **needs)  # the default is fine everywhere
        with pytest.raises(InvalidRequest, match="cannot start from a meta-init") as err:
            check_options(spec, init="meta", **needs)
        assert err.value.param == "init" and "'sft' or 'adalora'" in str(err.value)


def test_init_values_parse():
    assert parse_init(None) == ("base", None, None)
    assert parse_init("meta") == ("meta", None, None)
    assert parse_init("meta-init@3") == ("ref", "meta-init", 3)
    assert parse_init("my-init") == ("ref", "my-init", None)
    with pytest.raises(InvalidRequest, match="positive integer"):
        parse_init("meta-init@0")
    with pytest.raises(InvalidRequest, match="needs an adapter id"):
        parse_init("@2")


def test_inputs_hash_names_the_inputs():
    from qlp_ray.train.meta_entry import Source, inputs_hash

    a = Source("api", "api", 1, "a" * 64, Path("a.jsonl"))
    b = Source("ml", "ml", 2, "b" * 64, Path("b.jsonl"))
    shape = {"method": "lora", "rank": 8, "alpha": 16, "target_modules": ["q_proj"]}
    h = inputs_hash("tiny", shape, ReptileOptions(), [a, b], 256)
    assert h == inputs_hash("tiny", shape, ReptileOptions(), [b, a], 256)  # order-free
    # the adapter version and file path do not count; the data hash does
    moved = Source("ml", "x", 9, "b" * 64, Path("c"))
    assert h == inputs_hash("tiny", shape, ReptileOptions(), [a, moved], 256)
    for other in (
        inputs_hash(
            "tiny", shape, ReptileOptions(), [a, Source("ml", "ml", 2, "c" * 64, b.path)], 256
        ),  # fmt: skip
        inputs_hash("tiny", {**shape, "rank": 4}, ReptileOptions(), [a, b], 256),
        inputs_hash("tiny", shape, ReptileOptions(rounds=3), [a, b], 256),
        inputs_hash("other", shape, ReptileOptions(), [a, b], 256),
        inputs_hash("tiny", shape, ReptileOptions(), [a, b], 16),
    ):
        assert other != h


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli.state, "_config", None)
    for console in (cli.console, cli.err_console):
        monkeypatch.setattr(console, "_width", 400)
    return tmp_path / "home"


def test_meta_init_needs_two_source_domains(home):
    from qlp_ray.core.config import load_config
    from qlp_ray.train.meta_entry import init_for_run

    cfg = load_config()
    assert init_for_run(cfg, "base", cfg.train, "ml") is None
    with pytest.raises(InvalidRequest, match="at least two other domains") as err:
        init_for_run(cfg, "meta", cfg.train, "ml")  # an empty registry
    assert err.value.param == "init"
    qlora = cfg.train.model_copy(update={"method": "qlora"})
    with pytest.raises(InvalidRequest, match="needs train.method lora or adalora"):
        init_for_run(cfg, "meta", qlora, "ml")


def _train(*args: str):
    cli.state._config = None
    result = runner.invoke(cli.app, ["train", "--domain", "api", "--data", API, *args])
    return result, " ".join(result.output.split())


def test_cli_refuses_init_for_other_methods_before_ray(home):
    result, out = _train("--method", "distill", "--teacher", "base", "--init", "meta")
    assert result.exit_code == 1
    assert "--init: method 'distill' cannot start from a meta-init" in out
    result, out = _train("--method", "qlora", "--init", "meta")
    assert result.exit_code == 1 and "--init: method 'qlora' cannot start" in out
    result, out = _train("--init", "meta-init@x")
    assert result.exit_code == 1 and "--init: `init` version must be a positive integer" in out
    assert not (home / "runs").exists()  # nothing started


@pytest.fixture
def http(tmp_path):
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from qlp_ray.serve.http.errors import install_error_handlers
    from qlp_ray.serve.http.routes_jobs import router
    from tests.helpers.jobs_api import jobs_config

    cfg = jobs_config(tmp_path)
    data = cfg.paths.root / "data"
    data.mkdir(parents=True, exist_ok=True)
    pairs = data / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg)
    return TestClient(app), cfg, pairs


def test_rest_init_field(http):
    from qlp_ray.serve.http.routes_jobs import FineTuningRequest, train_command
    from tests.helpers.jobs_api import ADMIN

    client, cfg, pairs = http
    body = {"model": "api", "training_file": str(pairs), "method": "dpo", "init": "meta"}
    r = client.post("/v1/fine-tuning/jobs", json=body, headers=ADMIN)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "init" and "cannot start from a meta-init" in err["message"], err
    r = client.post("/v1/fine-tuning/jobs", json={"model": "api", "training_file": API,
                                                  "init": "x@0"}, headers=ADMIN)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "init", r.text
    sft = FineTuningRequest(model="api", training_file=API, init="meta",
                            hyperparameters={"method": "adalora"})  # fmt: skip
    command = train_command(cfg, sft)
    assert command[-4:] == ["--method", "adalora", "--init", "meta"]
