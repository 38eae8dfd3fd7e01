"""Secrets never travel through Ray (qlp_ray/core/config/secrets.py): what qlp hands to
Serve deployments, actors, Tune and Ray Train storage holds no secret value, and the
receiving process gets them from its environment or the deployer's secrets file."""

from __future__ import annotations

import json
import pickle
import stat

import cloudpickle
import pytest
from pydantic import ValidationError

from qlp_ray.core.config import QLPConfig, load_config, portable_config, resolve_config
from qlp_ray.core.config.secrets import secret_values, secrets_file, without_secrets
from qlp_ray.core.errors import ConfigError

SENTINEL = "s3nt1nel-Zq9"
DB_URL = f"postgresql://qlp:{SENTINEL}-pw@db.internal/qlp"
SECRETS = {
    "serve": {"api_key": f"{SENTINEL}-user", "admin_key": f"{SENTINEL}-admin"},
    "s3": {"access_key_id": f"{SENTINEL}-akid", "secret_access_key": f"{SENTINEL}-sk"},
    "store": {"url": DB_URL},
    "improve": {"api_key": f"{SENTINEL}-improve"},
    "router": {"external": {"api_key": f"{SENTINEL}-ext"}},
}
FIELDS = {
    "serve.api_key", "serve.admin_key", "s3.access_key_id", "s3.secret_access_key",
    "store.url", "improve.api_key", "router.external.api_key",
}  # fmt: skip


@pytest.fixture
def cfg(tmp_path) -> QLPConfig:
    """Every secret field set (from a YAML file / overrides: nothing in the environment)."""
    overrides = {"paths": {"home": str(tmp_path)}, **SECRETS}
    return load_config(overrides=overrides, environ={})


def test_every_secret_field_is_covered(cfg):
    assert set(secret_values(cfg)) == FIELDS  # a new secret field shows up here


def test_the_portable_dict_holds_no_secret_only_markers(cfg):
    data = portable_config(cfg)
    assert SENTINEL not in json.dumps(data)
    marker = data["s3"]["secret_access_key"]["qlp_secret"]
    assert marker == {"field": "s3.secret_access_key", "env": ["QLP_S3__SECRET_ACCESS_KEY"],
                      "file": None}  # fmt: skip
    assert data["store"]["url"]["qlp_secret"]["env"] == ["QLP_STORE__URL", "QLP_DB_URL"]
    # everything else travels as it is
    assert (
        data["serve"]["port"] == cfg.serve.port
        and data["paths"] == cfg.model_dump(mode="json")["paths"]
    )
    # fail closed: a process that skips resolve_config cannot use a marker as a key
    with pytest.raises(ValidationError):
        QLPConfig.model_validate(data)


def test_the_receiver_resolves_them_from_its_environment(cfg):
    environ = {
        "QLP_SERVE__API_KEY": f"{SENTINEL}-user",
        "QLP_SERVE__ADMIN_KEY": f"{SENTINEL}-admin",
        "QLP_S3__ACCESS_KEY_ID": f"{SENTINEL}-akid",
        "QLP_S3__SECRET_ACCESS_KEY": f"{SENTINEL}-sk",
        "QLP_DB_URL": DB_URL,  # store.url through the store's own variable
        "QLP_IMPROVE__API_KEY": f"{SENTINEL}-improve",
        "QLP_ROUTER__EXTERNAL__API_KEY": f"{SENTINEL}-ext",
    }
    assert resolve_config(portable_config(cfg), environ) == cfg


def test_the_secrets_file_serves_receivers_without_the_environment(cfg):
    data = portable_config(cfg, "serve-qlp")
    path = secrets_file(cfg.paths.root, "serve-qlp")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert data["serve"]["api_key"]["qlp_secret"]["file"] == str(path)
    assert SENTINEL not in json.dumps(data)
    assert resolve_config(data, {}) == cfg
    # the node's environment comes first (a cluster's Kubernetes Secret)
    env_first = resolve_config(data, {"QLP_SERVE__ADMIN_KEY": "from-env"})
    assert env_first.serve.admin_key == "from-env" and env_first.s3 == cfg.s3


def test_a_missing_secret_fails_naming_the_field_and_variable(cfg, tmp_path):
    data = portable_config(cfg, "serve-qlp")
    secrets_file(cfg.paths.root, "serve-qlp").unlink()  # another node: no shared home
    env = {k: "x" for k in ("QLP_SERVE__API_KEY", "QLP_SERVE__ADMIN_KEY", "QLP_DB_URL",
                            "QLP_IMPROVE__API_KEY", "QLP_ROUTER__EXTERNAL__API_KEY",
                            "QLP_S3__ACCESS_KEY_ID")}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        resolve_config(data, env)
    msg = err.value.message
    assert "`s3.secret_access_key`" in msg and "QLP_S3__SECRET_ACCESS_KEY" in msg, msg
    assert "serve-qlp.json is not readable here" in msg, msg


def test_unset_secrets_stay_unset(tmp_path):
    cfg = load_config(overrides={"paths": {"home": str(tmp_path)}}, environ={})
    data = portable_config(cfg, "serve-qlp")
    assert data == cfg.model_dump(mode="json")
    assert not secrets_file(cfg.paths.root, "serve-qlp").exists()
    # a receiver's own variables do not add a secret the deployer did not have
    assert resolve_config(data, {"QLP_SERVE__API_KEY": "k"}).serve.api_key is None


def test_serve_init_args_hold_no_secret(cfg):
    """What Serve pickles for each deployment (init args, actor options) is secret-free."""
    from ray.serve._private.build_app import build_app as ray_build_app

    from qlp_ray.serve.app import build_app

    built = ray_build_app(build_app(cfg), name="qlp")
    assert {d.name for d in built.deployments} >= {"Gateway", "Compositor"}
    for d in built.deployments:
        shipped = cloudpickle.dumps((d.init_args, d.init_kwargs, d.ray_actor_options))
        assert SENTINEL.encode() not in shipped, d.name
    gateway = next(d for d in built.deployments if d.name == "Gateway")
    assert resolve_config(gateway.init_args[0]) == cfg  # the replicas get them back


def test_tune_trainable_holds_no_secret(cfg):
    import inspect

    from qlp_ray.tune.search import make_trainable

    # the base model argument (a path, or a reference the trial resolves on its node)
    base = next(p for p in inspect.signature(make_trainable).parameters if p.startswith("base"))
    trainable = make_trainable(cfg, **{base: "/m"}, records=[], eval_records=[],
                               storage_path=str(cfg.paths.runs))  # fmt: skip
    assert SENTINEL.encode() not in cloudpickle.dumps(trainable)
    assert without_secrets(cfg).train == cfg.train


def test_train_storage_filesystem_pickles_without_keys(cfg, monkeypatch):
    from pyarrow import fs

    from qlp_ray.train.storage import run_storage

    cfg.train.storage_uri = "s3://bucket/runs"
    cfg.s3.endpoint_url = "http://127.0.0.1:9"
    path, filesystem = run_storage(cfg)
    assert path == "bucket/runs"
    shipped = pickle.dumps(filesystem)
    assert SENTINEL.encode() not in shipped
    # unpickled where the keys are in the environment: pyarrow gets them
    monkeypatch.setenv("QLP_S3__ACCESS_KEY_ID", "env-akid")
    monkeypatch.setenv("QLP_S3__SECRET_ACCESS_KEY", "env-sk")
    there = pickle.loads(shipped)
    assert isinstance(there, fs.S3FileSystem) and there.region == "us-east-1"
    options = fs.S3FileSystem.__reduce__(there)[1][0]  # pyarrow's own (keyed) state
    assert (options["access_key"], options["secret_key"]) == ("env-akid", "env-sk")
    assert options["endpoint_override"] == "127.0.0.1:9"
    # and without them, from the deployer's secrets file
    monkeypatch.delenv("QLP_S3__ACCESS_KEY_ID")
    monkeypatch.delenv("QLP_S3__SECRET_ACCESS_KEY")
    options = fs.S3FileSystem.__reduce__(pickle.loads(shipped))[1][0]
    assert options["secret_key"] == f"{SENTINEL}-sk"
