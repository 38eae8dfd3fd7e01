"""Config loading: every YAML in configs/ loads; precedence; errors name the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qlp_ray.core.config import DEFAULT_CONFIG_FILE, QLPConfig, load_config
from qlp_ray.core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_yaml_mirrors_field_defaults():
    from_yaml = load_config(environ={})
    assert from_yaml.model_dump(exclude={"paths"}) == QLPConfig().model_dump(exclude={"paths"})


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
