"""Integration fixtures: a real local Ray per test module (never `ray start`/`ray stop`).

Module scope keeps modules independent: some start their own multi-node cluster, and a
Serve app of one module must not hold CPUs that the next module's Ray Train run needs.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """An in-process local Ray cluster with 2 CPUs, shut down at the end of the module."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()
