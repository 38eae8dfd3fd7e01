"""Start a local Ray for tests, retrying once when a loaded machine misses the deadline."""

from __future__ import annotations

from typing import Any


def init_local_ray(**options: Any) -> None:
    """``ray.init(address="local", num_cpus=2, include_dashboard=False, **options)``.

    A loaded 2-core machine can miss Ray's node start-up deadline; that one error is
    retried once. The Serve processes get the default config's ``serve_env`` (throughput
    mode). Never ``ray start`` / ``ray stop``.
    """
    import ray

    from qlp_ray.config import QLPConfig
    from qlp_ray.runtime import cluster_env

    for attempt in (1, 2):
        try:
            with cluster_env(QLPConfig()):  # Serve processes as `qlp serve` starts them
                ray.init(address="local", num_cpus=2, include_dashboard=False, **options)
            return
        except Exception as exc:  # ray raises a bare Exception for this timeout
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
