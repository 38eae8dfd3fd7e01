"""The one list of training methods, the data-shape checks and the dispatch (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp_ray import cli
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.capsules import sample_path
from qlp_ray.train import PEFT_METHODS
from qlp_ray.train.methods import (
    METHOD_NAMES,
    METHODS,
    check_options,
    get_method,
    methods_table,
    parse_reward,
    validate_data_file,
)

runner = CliRunner()


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_method_list_and_its_aliases():
    assert METHOD_NAMES == ("sft", "adalora", "qlora", "dpo", "ppo", "grpo", "rloo", "reward",
                            "distill")  # fmt: skip
    assert get_method("lora") is METHODS["sft"]  # back-compat: the old PEFT name
    # the SFT entries train with exactly the PEFT methods the config takes
    assert tuple(sorted(m.peft for m in METHODS.values() if m.peft)) == tuple(sorted(PEFT_METHODS))
    assert [m.name for m in METHODS.values() if not m.available] == []
    assert METHODS["reward"].kind == "reward_model"
    assert {r["method"] for r in methods_table()} == set(METHOD_NAMES)
    with pytest.raises(InvalidRequest, match=r"method must be 'sft', 'adalora'.* got 'dora'"):
        get_method("dora")


@pytest.mark.parametrize(
    ("method", "kw", "param", "needle"),
    [
        ("grpo", {}, "reward", "needs a reward"),
        ("dpo", {"reward": "json"}, "reward", "takes no reward"),
        ("distill", {}, "teacher", "needs a teacher"),
        ("sft", {"teacher": "base"}, "teacher", "takes no teacher"),
        ("reward", {"parent": "api"}, "parent", "does not start from a parent"),
        ("dpo", {"parent": "api@0"}, "parent", "positive integer"),
        ("rloo", {"reward": "vibes"}, "reward", "must start with 'keyword'"),
        ("rloo", {"reward": "keyword:"}, "reward", "needs a value"),
    ],
)
def test_option_errors_name_the_option(method, kw, param, needle):
    with pytest.raises(InvalidRequest, match=needle) as err:
        check_options(METHODS[method], **kw)
    assert err.value.param == param


def test_an_entry_without_a_runner_is_not_available_yet():
    from dataclasses import replace

    from qlp_ray.train.methods import require_available

    with pytest.raises(InvalidRequest, match="'ppo' is not available yet") as err:
        require_available(replace(METHODS["ppo"], runner=None))
    assert err.value.param == "method"


def test_reward_specs_parse():
    assert parse_reward("keyword: deploy , docker").arg == "deploy,docker"
    spec = parse_reward("reward-model:api-reward@2")
    assert (spec.kind, spec.arg, spec.version) == ("reward-model", "api-reward", 2)
    assert spec.as_text() == "reward-model:api-reward@2"
    assert parse_reward("domain").as_text() == "domain"


def test_data_shape_errors_name_the_row_and_the_field(tmp_path):
    pairs = _write(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                          {"prompt": "a", "chosen": "b"}])  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"p.jsonl:2: missing field 'rejected'"):
        validate_data_file(METHODS["dpo"], pairs)
    same = _write(tmp_path / "s.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}])
    with pytest.raises(InvalidRequest, match=r"s.jsonl:1: chosen and rejected are identical"):
        validate_data_file(METHODS["reward"], same)
    prompts = _write(tmp_path / "q.jsonl", [{"prompt": "x"}, {"instruction": "y"}, {"text": 1}])
    with pytest.raises(InvalidRequest, match=r"q.jsonl:3: missing field 'prompt'"):
        validate_data_file(METHODS["grpo"], prompts)
    with pytest.raises(InvalidRequest, match=r"q.jsonl:1: missing field 'instruction'"):
        validate_data_file(METHODS["distill"], prompts)
    assert validate_data_file(METHODS["sft"], sample_path("api", "train")) > 100
    assert validate_data_file(METHODS["rloo"], sample_path("api", "train")) > 100  # capsules


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli.state, "_config", None)
    for console in (cli.console, cli.err_console):
        monkeypatch.setattr(console, "_width", 400)
    return tmp_path / "home"


def _train(*args: str):
    cli.state._config = None
    result = runner.invoke(cli.app, ["train", "--domain", "api", *args])
    return result, " ".join(result.output.split())


def test_cli_refuses_before_ray(home, tmp_path):
    pairs = _write(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b"}])
    result, out = _train("--data", str(pairs), "--method", "dpo")
    assert result.exit_code == 1 and "p.jsonl:1: missing field 'rejected'" in out
    result, out = _train("--data", str(sample_path("api", "train")), "--method", "ppo")
    assert result.exit_code == 1 and "--reward: method 'ppo' needs a reward" in out
    result, out = _train("--data", str(sample_path("api", "train")), "--method", "grpo")
    assert result.exit_code == 1 and "--reward: method 'grpo' needs a reward" in out
    result, out = _train("--data", str(sample_path("api", "train")), "--method", "distill",
                         "--teacher", "nope")  # fmt: skip
    assert result.exit_code == 1 and "nope" in out  # not in the registry
    api = str(sample_path("api", "train"))
    result, out = _train("--data", api, "--method", "dpo", "--kl-coef", "0.1")
    assert result.exit_code == 1 and "--kl-coef: only for --method ppo (this run is dpo)" in out
    result, out = _train("--data", api, "--method", "ppo", "--reward", "json", "--kl-coef", "-1")
    assert result.exit_code == 1 and "`train.ppo.kl_coef`: Input should be greater" in out
    result, out = _train("--data", api, "--method", "ppo", "--reward", "json", "--clip-range", "1")
    assert result.exit_code == 1 and "`train.ppo.clip_range`: Input should be less" in out
    assert not (home / "runs").exists()  # nothing started


def test_ppo_options_come_from_train_ppo_and_the_flags():
    """train.ppo + one run's overrides -> PPOOptions (checkpoint_every 0: the final one only)."""
    from qlp_ray.core.config import ConfigError, load_config
    from qlp_ray.train.ppo_run import ppo_options
    from qlp_ray.train.ray_train import effective_train_config

    cfg = load_config(overrides={"train": {"ppo": {"gamma": 0.9, "kl_target": 3.0}}})
    tc = effective_train_config(cfg, steps=12, overrides={
        "batch_size": 6, "lr_scheduler": "cosine", "checkpoint_every": 0,
        "ppo": {"kl_coef": 0.05, "ppo_epochs": 3, "clip_range": None}})  # fmt: skip
    o = ppo_options(tc)
    assert (o.kl_coef, o.kl_target, o.gamma, o.ppo_epochs, o.clip) == (0.05, 3.0, 0.9, 3, 0.2)
    assert (o.steps, o.batch_size, o.minibatch_size) == (12, 6, 3)
    assert (o.lr_scheduler, o.checkpoint_every, o.max_new_tokens) == ("cosine", 12, 16)
    tc = effective_train_config(cfg, steps=12, overrides={"checkpoint_every": 5})
    assert ppo_options(tc).checkpoint_every == 5
    with pytest.raises(ConfigError, match=r"`train.ppo.ppo_epochs`"):
        effective_train_config(cfg, overrides={"ppo": {"ppo_epochs": 0}})
    with pytest.raises(ConfigError, match=r"`train.ppo.lam`"):
        load_config(overrides={"train": {"ppo": {"lam": 1.5}}})


def test_sft_family_dispatches_to_the_sft_pipeline(home, monkeypatch):
    """sft / lora / adalora / qlora reach train_and_register with their PEFT method."""
    from qlp_ray.train import pipeline

    seen = []

    def fake(cfg, **kw):  # stands in for the Ray Train run only: the dispatch is under test
        seen.append(kw["method"])
        raise InvalidRequest("stop here")

    monkeypatch.setattr(pipeline, "train_and_register", fake)
    monkeypatch.setattr("qlp_ray.cli.train.ensure_ray", lambda *a, **k: "none")
    for method in ("sft", "lora", "adalora", "qlora"):
        result, out = _train("--data", str(sample_path("api", "train")), "--method", method)
        assert result.exit_code == 1 and "stop here" in out
    assert seen == ["lora", "lora", "adalora", "qlora"]


# --- REST: POST /v1/fine-tuning/jobs takes the method and its options ---------------------


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
    _write(data / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3)
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg)
    return TestClient(app), cfg, data / "pairs.jsonl"


API = str(sample_path("api", "train"))


@pytest.mark.parametrize(
    ("extra", "param", "needle"),
    [
        ({"method": "nope"}, "method", "method must be 'sft'"),
        ({"method": "grpo"}, "reward", "needs a reward"),
        ({"method": "sft", "teacher": "base"}, "teacher", "takes no teacher"),
        ({"method": "dpo", "training_file": API}, "training_file", "missing field 'prompt'"),
        ({"method": "dpo", "hyperparameters": {"method": "adalora"}}, "hyperparameters.method",
         "contradicts"),
        ({"method": "dpo", "hyperparameters": {"n_epochs": 1}}, "hyperparameters.n_epochs",
         "applies to SFT"),
        ({"method": "dpo", "hyperparameters": {"kl_coef": 0.1}}, "hyperparameters.kl_coef",
         "applies to method 'ppo', not 'dpo'"),
        ({"hyperparameters": {"ppo_epochs": 2}}, "hyperparameters.ppo_epochs",
         "applies to method 'ppo', not 'sft'"),
        ({"method": "ppo", "reward": "json", "training_file": API,
          "hyperparameters": {"kl_coef": -0.1}}, "hyperparameters.kl_coef", "greater than"),
        ({"method": "ppo", "reward": "json", "training_file": API,
          "hyperparameters": {"clip_range": 1.5}}, "hyperparameters.clip_range", "less than"),
    ],
)  # fmt: skip
def test_rest_method_errors_name_the_field(http, extra, param, needle):
    from tests.helpers.jobs_api import ADMIN

    client, _, pairs = http
    body = {"model": "api", "training_file": str(pairs), **extra}
    r = client.post("/v1/fine-tuning/jobs", json=body, headers=ADMIN)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"], err


def test_rest_method_becomes_the_qlp_train_command(http):
    from qlp_ray.serve.http.routes_jobs import FineTuningRequest, train_command

    _, cfg, pairs = http
    hp = {"n_steps": 4, "lora_rank": 4}
    body = FineTuningRequest(model="api", training_file=str(pairs), method="dpo",
                             parent="api@2", hyperparameters=hp)  # fmt: skip
    command = train_command(cfg, body)
    assert command == ["train", "--domain", "api", "--data", str(pairs.resolve()), "--steps",
                       "4", "--method", "dpo", "--rank", "4", "--parent", "api@2"]  # fmt: skip
    grpo = FineTuningRequest(model="api", training_file=API, method="grpo", reward="domain")
    assert train_command(cfg, grpo)[-4:] == ["--method", "grpo", "--reward", "domain"]
    ppo = FineTuningRequest(model="api", training_file=API, method="ppo", reward="json",
                            hyperparameters={"kl_coef": 0.05, "kl_target": 2.0,
                                             "clip_range": 0.1, "ppo_epochs": 3})  # fmt: skip
    assert train_command(cfg, ppo)[-12:] == [
        "--method", "ppo", "--kl-coef", "0.05", "--kl-target", "2.0", "--clip-range", "0.1",
        "--ppo-epochs", "3", "--reward", "json"]  # fmt: skip
