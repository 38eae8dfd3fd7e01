"""Config: default.yaml is generated from the models; every YAML in configs/ loads;
precedence; errors name the option; shipped files resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from qlp_ray.core import paths
from qlp_ray.core.config import (
    DEFAULT_CONFIG_FILE,
    QLPConfig,
    dump_defaults,
    dump_effective,
    load_config,
)
from qlp_ray.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REGENERATE = "regenerate it: `qlp config dump --output configs/default.yaml`"


def test_default_yaml_is_generated_from_the_models():
    assert DEFAULT_CONFIG_FILE == CONFIGS / "default.yaml"
    assert dump_defaults() == DEFAULT_CONFIG_FILE.read_text(), (
        f"configs/default.yaml differs from the config models; {REGENERATE}"
    )


def test_default_yaml_loads_to_the_field_defaults():
    from_yaml = load_config(defaults_file=DEFAULT_CONFIG_FILE, environ={})
    assert from_yaml.model_dump() == QLPConfig().model_dump()
    assert load_config(environ={}).model_dump() == QLPConfig().model_dump()


def _fields(model: BaseModel, prefix: str = ""):
    for name, info in type(model).model_fields.items():
        yield prefix + name, info
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _fields(value, f"{prefix}{name}.")


def test_every_option_has_a_description():
    fields = dict(_fields(QLPConfig()))
    assert len(fields) > 200
    undocumented = [name for name, info in fields.items() if not info.description]
    assert not undocumented, f"options without a description: {undocumented}"
    # each option's description is the comment right above it in the generated file
    text = dump_defaults()
    assert "  # HTTP port.\n  port: 8000\n" in text
    assert "\n# Ray Serve app and HTTP API (qlp_ray.serve).\nserve:\n" in text


def test_cli_dump_prints_the_defaults_and_writes_a_file(tmp_path: Path):
    from qlp_ray.cli.app import app

    runner = CliRunner()
    printed = runner.invoke(app, ["config", "dump"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == dump_defaults()
    out = tmp_path / "d.yaml"
    written = runner.invoke(app, ["config", "dump", "--output", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_text() == dump_defaults()


def test_effective_dump_applies_env_and_redacts_secrets(tmp_path: Path):
    cfg = load_config(
        environ={"QLP_SERVE__PORT": "9123", "QLP_SERVE__ADMIN_KEY": "s3cret-admin"},
        overrides={"s3": {"secret_access_key": "s3cret-s3"}},
    )
    text = dump_effective(cfg)
    assert "s3cret" not in text
    assert "  admin_key: <redacted>\n" in text
    assert "  api_key: null\n" in text  # unset secrets stay visible as unset
    data = yaml.safe_load(text)
    assert data["serve"]["port"] == 9123
    assert QLPConfig.model_validate(data).serve.port == 9123


def test_shipped_config_from_the_checkout():
    assert paths.source_checkout() == CONFIGS.parent
    assert paths.shipped_config("prices.yaml") == CONFIGS / "prices.yaml"
    assert paths.shipped_config("tune/lora.yaml") == CONFIGS / "tune" / "lora.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        paths.shipped_config("nope.yaml")
    with pytest.raises(ConfigError, match="relative"):
        paths.shipped_config("../pyproject.toml")


def test_shipped_config_without_a_checkout_reads_package_data(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(paths, "source_checkout", lambda: None)
    packaged = Path(paths.__file__).resolve().parent.parent / paths.PACKAGED_CONFIGS
    assert paths.configs_dir() == packaged
    if not packaged.is_dir():  # a checkout: the build copies configs/ there, git does not
        with pytest.raises(ConfigError, match="reinstall"):
            paths.shipped_config("prices.yaml")


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml")), ids=str
)
def test_every_yaml_file_parses(path: Path):
    data = yaml.safe_load(path.read_text())
    assert data is not None, f"{path} is empty"
    # Files whose top-level keys are config sections must validate as a QLPConfig overlay.
    if isinstance(data, dict) and set(data) <= set(QLPConfig.model_fields):
        load_config(path, environ={})


def test_precedence_user_file_then_env(tmp_path: Path):
    user = tmp_path / "user.yaml"
    user.write_text("serve:\n  port: 9001\ntrain:\n  rank: 4\n")
    cfg = load_config(user, environ={"QLP_SERVE__PORT": "9002", "QLP_HOME": str(tmp_path)})
    assert cfg.serve.port == 9002  # env beats file
    assert cfg.train.rank == 4  # file beats default
    assert cfg.paths.root == tmp_path.resolve()
    assert cfg.registry_uri == str(tmp_path.resolve() / "registry")


def test_unknown_key_is_named(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("serve:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"serve\.prot"):
        load_config(bad, environ={})


def test_bad_value_is_quoted(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"serve\.port.*70000"):
        load_config(environ={"QLP_SERVE__PORT": "70000"})


def test_adalora_schedule_checked():
    with pytest.raises(ConfigError, match="tinit"):
        load_config(
            environ={},
            overrides={"train": {"method": "adalora", "steps": 10, "adalora": {"tinit": 8}}},
        )


def test_missing_and_invalid_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("serve: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, environ={})
    assert DEFAULT_CONFIG_FILE.is_file()


def test_secret_variables_are_every_secret_field():
    from qlp_ray.core.config import secret_variables

    assert secret_variables() == {
        "QLP_DB_URL",
        "QLP_IMPROVE__API_KEY",
        "QLP_ROUTER__EXTERNAL__API_KEY",
        "QLP_S3__ACCESS_KEY_ID",
        "QLP_S3__SECRET_ACCESS_KEY",
        "QLP_SERVE__ADMIN_KEY",
        "QLP_SERVE__API_KEY",
        "QLP_STORE__URL",
    }


def test_node_home_takes_the_home_of_the_process_that_reads_the_config(monkeypatch, tmp_path):
    """A config shipped to a Ray worker on another node (a plain dict, as Serve and Ray Train
    pass it) keeps the sender's home unless ``paths.node_home``: then the receiving
    process's ``QLP_HOME`` (the node's) wins."""
    sent = QLPConfig.model_validate({"paths": {"home": str(tmp_path / "laptop")}})
    shipped = sent.model_dump(mode="json")
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "node-b"))
    assert QLPConfig.model_validate(shipped).paths.root == tmp_path / "laptop"
    shipped["paths"]["node_home"] = True
    received = QLPConfig.model_validate(shipped)
    assert received.paths.root == tmp_path / "node-b"
    assert received.paths.keys == tmp_path / "node-b" / "keys"
    monkeypatch.delenv("QLP_HOME")  # a node without QLP_HOME keeps what it was sent
    assert QLPConfig.model_validate(shipped).paths.root == tmp_path / "laptop"
