"""The Serve environment of clusters qlp starts (``runtime.serve_env`` / ``cluster_env``)."""

from __future__ import annotations

import os

import pytest

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.runtime import cluster_env, ensure_ray, serve_env

KEY = "RAY_SERVE_THROUGHPUT_OPTIMIZED"


def _cfg(on: bool) -> QLPConfig:
    cfg = QLPConfig()
    cfg.serve.ray_throughput_optimized = on
    return cfg


def test_throughput_mode_is_the_default_and_can_be_turned_off() -> None:
    assert serve_env(QLPConfig()) == {KEY: "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    assert serve_env(_cfg(False)) == {}


def test_cluster_env_is_set_only_while_the_cluster_starts(monkeypatch) -> None:
    monkeypatch.delenv(KEY, raising=False)
    with cluster_env(_cfg(True)):
        assert os.environ[KEY] == "1"
    assert KEY not in os.environ  # this process's own handles keep Ray's defaults


def test_a_variable_the_user_set_wins_and_stays(monkeypatch) -> None:
    monkeypatch.setenv(KEY, "0")
    with cluster_env(_cfg(True)):
        assert os.environ[KEY] == "0"
    assert os.environ[KEY] == "0"


def test_cluster_env_restores_after_an_error(monkeypatch) -> None:
    monkeypatch.delenv(KEY, raising=False)
    with pytest.raises(RuntimeError), cluster_env(_cfg(True)):
        raise RuntimeError("ray.init failed")
    assert KEY not in os.environ


def test_ensure_ray_starts_a_local_cluster_with_the_serve_env(monkeypatch) -> None:
    """The in-process cluster of ``qlp`` commands is started while the variable is set
    (its raylet, and so every Serve process, inherits it); off → not set."""
    import ray

    seen: list[str | None] = []
    monkeypatch.delenv(KEY, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(os.environ.get(KEY)))
    assert ensure_ray(_cfg(True), persistent=False) == "local"
    assert ensure_ray(_cfg(False), persistent=False) == "local"
    assert seen == ["1", None]
    assert KEY not in os.environ
