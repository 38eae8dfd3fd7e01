"""A real S3-compatible HTTP server for tests: moto in server mode on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from qlp_ray.core.config import S3Config
from tests.helpers.ray_start import free_port


@contextlib.contextmanager
def moto_s3(*buckets: str) -> Iterator[S3Config]:
    """The ``s3`` config of a fresh moto server holding ``buckets``; stopped afterwards."""
    from moto.server import ThreadedMotoServer

    from qlp_ray.registry.s3 import make_client

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        cfg = S3Config(
            endpoint_url=f"http://127.0.0.1:{port}", access_key_id="test", secret_access_key="test"
        )
        client = make_client(cfg)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield cfg
    finally:
        server.stop()
