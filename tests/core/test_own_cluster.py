"""The local Ray cluster qlp starts: its own temp dir, Ray's token, and a stop that ends
that cluster only (``qlp_ray.core.runtime``; no Ray started here)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qlp_ray.core.config import load_config
from qlp_ray.core.runtime import (
    connect_existing,
    own_cluster_address,
    own_cluster_dir,
    prepare_client,
    stop_local_cluster,
    token_path,
)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return load_config(overrides={"paths": {"home": str(tmp_path / "home")}}, environ={})


def test_one_short_temp_dir_per_home_under_tmpdir(cfg, tmp_path) -> None:
    other = cfg.model_copy(deep=True)
    other.paths.home = tmp_path / "other-home"
    mine = own_cluster_dir(cfg)
    assert mine.parent == tmp_path / "t" and mine.name.startswith("qlp-ray-")
    assert own_cluster_dir(other) != mine and own_cluster_dir(cfg) == mine
    assert len(mine.name) <= 20  # Ray's socket paths live under it


def test_no_cluster_then_a_stale_address_file_is_no_cluster(cfg) -> None:
    assert own_cluster_address(cfg) is None
    assert connect_existing(cfg) is False
    own_cluster_dir(cfg).mkdir()
    (own_cluster_dir(cfg) / "ray_current_cluster").write_text("127.0.0.1:1")
    assert own_cluster_address(cfg) is None  # no gcs_server of that dir runs


def test_prepare_client_turns_token_auth_on_with_an_owner_only_token(cfg) -> None:
    prepare_client(cfg)
    assert os.environ["RAY_AUTH_MODE"] == "token"
    token = token_path()
    assert token == Path(os.environ["HOME"]) / ".ray" / "auth_token"
    assert len(token.read_text()) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    first = token.read_text()
    prepare_client(cfg)
    assert token.read_text() == first  # kept, never rotated behind the cluster's back


def test_prepare_client_leaves_a_given_cluster_and_the_users_choice_alone(cfg, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    prepare_client(cfg)
    assert "RAY_AUTH_MODE" not in os.environ and not token_path().exists()
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    prepare_client(cfg)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    cfg.cluster.token_auth = False
    prepare_client(cfg)
    assert "RAY_AUTH_MODE" not in os.environ and not token_path().exists()


def test_stop_ends_the_processes_of_this_homes_cluster_only(cfg) -> None:
    assert stop_local_cluster(cfg) is False  # none ran
    sleeper = "import sys, time; time.sleep(120)"
    own_cluster_dir(cfg).mkdir()
    (own_cluster_dir(cfg) / "ray_current_cluster").write_text("127.0.0.1:1")
    ours = subprocess.Popen([sys.executable, "-c", sleeper, str(own_cluster_dir(cfg))])
    theirs = subprocess.Popen([sys.executable, "-c", sleeper, "/tmp/ray/other-cluster"])
    try:
        assert stop_local_cluster(cfg, grace_s=5) is True
        assert ours.wait(timeout=10) is not None
        assert theirs.poll() is None  # another cluster's process is left alone
        assert not (own_cluster_dir(cfg) / "ray_current_cluster").exists()
    finally:
        for p in (ours, theirs):
            p.kill()
            p.wait()
