"""Shared fixtures: one QLP_HOME per test session with the tiny base model and signing keys.

Building ``builtin:tiny-llama`` takes about a minute on 2 cores, so it happens once per
session. Set ``QLP_TEST_HOME=/some/dir`` to keep that home (model, keys) across sessions
while developing; by default it is a fresh session temp dir.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One encoder export (OpenVINO IR, ~10 s) per session instead of one per test home; the
# Serve replicas Ray starts inherit it.
if "QLP_EMBEDDING_CACHE" not in os.environ:
    os.environ["QLP_EMBEDDING_CACHE"] = tempfile.mkdtemp(prefix="qlp_embeddings_")
    atexit.register(shutil.rmtree, os.environ["QLP_EMBEDDING_CACHE"], True)


@pytest.fixture(scope="session")
def qlp_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide ``QLP_HOME`` holding the built tiny model and a signing key pair."""
    from qlp_ray.core.config import load_config
    from qlp_ray.models.tiny import build_tiny_model
    from qlp_ray.registry.signing import PRIVATE_KEY_FILE, init_keys

    pinned = os.environ.get("QLP_TEST_HOME")
    home = Path(pinned) if pinned else tmp_path_factory.mktemp("qlp_home")
    home.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QLP_HOME", str(home))
        cfg = load_config()
        build_tiny_model(cfg)
        if not (cfg.paths.keys / PRIVATE_KEY_FILE).is_file():
            init_keys(cfg.paths.keys)
    return home


@pytest.fixture
def tiny_cfg(qlp_home: Path, monkeypatch: pytest.MonkeyPatch):
    """The default config pointed at the session ``qlp_home`` (tiny model built, keys ready)."""
    from qlp_ray.core.config import load_config

    monkeypatch.setenv("QLP_HOME", str(qlp_home))
    return load_config()


@pytest.fixture(scope="module")
def ray_local():
    """Integration/e2e: an in-process local Ray with 2 CPUs for one test module.

    Module scope keeps modules independent: some start their own multi-node cluster, and
    a Serve app of one module must not hold CPUs that the next module's Ray Train needs.
    Never `ray start` / `ray stop`.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    from tests.helpers.ray_start import init_local_ray

    init_local_ray()
    try:
        yield ray
    finally:
        ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_dashboard():
    """A real local Ray head whose dashboard (the Jobs API) listens on free ports; its URL.

    ``ray.cluster_utils.Cluster`` rather than ``ray.init`` so the dashboard agent gets a
    free port too (the default 52365 may be taken by another Ray on the machine).
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # another module's Ray has no dashboard
    from qlp_ray.core.config import QLPConfig
    from qlp_ray.core.runtime import cluster_env

    port = _free_port()
    with cluster_env(QLPConfig()):  # Serve processes as `qlp serve` starts them
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": port,
                "dashboard_agent_listen_port": _free_port(),
            },
        )
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()
        cluster.shutdown()
