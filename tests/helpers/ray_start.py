"""Local Ray and served apps for tests (Ray start retried once on a loaded machine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def init_local_ray(**options: Any) -> None:
    """``ray.init(address="local", num_cpus=2, include_dashboard=False, **options)``.

    A loaded 2-core machine can miss Ray's node start-up deadline; that one error is
    retried once. The Serve processes get the default config's ``serve_env`` (throughput
    mode). Never ``ray start`` / ``ray stop``.
    """
    import ray

    from qlp_ray.core.config import QLPConfig
    from qlp_ray.core.runtime import cluster_env

    for attempt in (1, 2):
        try:
            with cluster_env(QLPConfig()):  # Serve processes as `qlp serve` starts them
                ray.init(address="local", num_cpus=2, include_dashboard=False, **options)
            return
        except Exception as exc:  # ray raises a bare Exception for this timeout
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise


def served_app_fixture(build: Callable[[Path], tuple[Any, Any]], name: str, url: str) -> Any:
    """A module-scoped ``app`` fixture: ``build(tmp_dir) -> (cfg, registry)``, then the app
    deployed at ``url`` on a fresh local Ray (:func:`init_local_ray`), as ``qlp serve``
    runs it; yields ``{"cfg", "registry"}``, shuts Serve and Ray down afterwards."""
    import pytest

    @pytest.fixture(scope="module")
    def app(tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
        import ray
        from ray import serve

        from qlp_ray.serve.app import deploy

        cfg, registry = build(tmp_path_factory.mktemp(name))
        init_local_ray(log_to_driver=False)
        try:
            assert deploy(cfg, persistent=False) == url
            yield {"cfg": cfg, "registry": registry}
        finally:
            serve.shutdown()
            ray.shutdown()

    return app
