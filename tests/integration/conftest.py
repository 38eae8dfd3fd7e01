"""Integration fixtures: a real local Ray for the session (never `ray start`/`ray stop`)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """An in-process local Ray cluster with 2 CPUs, shut down at the end of the session."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()
