"""Shared fixtures: one QLP_HOME per test session with the tiny base model and signing keys.

Building ``builtin:tiny-llama`` takes about a minute on 2 cores, so it happens once per
session. Set ``QLP_TEST_HOME=/some/dir`` to keep that home (model, keys) across sessions
while developing; by default it is a fresh session temp dir.

Integration tests share one local Ray cluster per session (``ray_session``); unit tests
run without Ray (``ray.init`` refuses inside them).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
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


@pytest.fixture(scope="session")
def ray_session():
    """Integration/e2e: the one local Ray cluster of the session, started on first use.

    See tests/helpers/ray_start.py: a head with the dashboard (Jobs API), a metrics export
    port and 8 logical CPUs. Modules never restart it: a module removes what it added
    (its Serve app, worker nodes, detached actors). Never `ray start` / `ray stop`.
    While it runs, ``RAY_ADDRESS`` names it (qlp code in this process and the ``qlp``
    commands tests start join it, as a user's shell with ``RAY_ADDRESS`` would) and
    ``RAY_AUTH_MODE=disabled`` (:func:`tests.helpers.ray_start.session_environ`).
    """
    from tests.helpers.ray_start import session_environ, start_session_cluster

    with session_environ():
        session = start_session_cluster()
        os.environ["RAY_ADDRESS"] = session.address
        try:
            yield session
        finally:
            session.shutdown()


@pytest.fixture(scope="session")
def ray_local(ray_session):
    """The ``ray`` module, connected to the session's cluster."""
    import ray

    return ray


@pytest.fixture(scope="session")
def ray_dashboard(ray_session) -> str:
    """URL of the session cluster's dashboard (the Jobs API)."""
    return ray_session.dashboard_url


class _NoRayInUnitTests(ConnectionError):
    pass


def _refuse_ray(*_args, **_kwargs):
    raise _NoRayInUnitTests(
        "a unit test tried to start or join Ray: mark its module "
        "`pytestmark = pytest.mark.integration` and use the ray_local fixture"
    )


@pytest.fixture(autouse=True)
def _unit_tests_run_without_ray(request: pytest.FixtureRequest, monkeypatch):
    """Unit tests never start Ray, and never see the session's cluster if it is up: for
    them ``ray.init`` refuses (a ConnectionError, as when there is no cluster to join),
    ``ray.is_initialized()`` is False and ``RAY_ADDRESS`` is unset."""
    if request.node.get_closest_marker("integration") is not None:
        return
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # set while the session cluster runs
    ray = sys.modules.get("ray")
    if ray is None:
        try:
            import ray
        except ImportError:
            return
    monkeypatch.setattr(ray, "init", _refuse_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
