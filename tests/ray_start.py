"""Start a local Ray for tests, retrying once when a loaded machine misses the deadline."""

from __future__ import annotations

from typing import Any


def init_local_ray(**options: Any) -> None:
    """``ray.init(address="local", num_cpus=2, include_dashboard=False, **options)``.

    A loaded 2-core machine can miss Ray's node start-up deadline; that one error is
    retried once. Never ``ray start`` / ``ray stop``.
    """
    import ray

    for attempt in (1, 2):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, **options)
            return
        except Exception as exc:  # ray raises a bare Exception for this timeout
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
