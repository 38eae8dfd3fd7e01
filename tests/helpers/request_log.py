"""Reading the gateway's request log from a test: rows are committed before the reply
(``durable``, the default) or just after it (``background``)."""

from __future__ import annotations

import time
from typing import Any


def committed_request(store: Any, request_id: str, timeout: float = 5.0) -> Any:
    """The stored row of ``request_id``, waiting up to ``timeout`` s for the gateway's
    commit when a test opts into ``store.request_log_commit: background``."""
    from qlp_ray.core.errors import NotFound

    deadline = time.monotonic() + timeout
    while True:
        try:
            return store.get_request(request_id)
        except NotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
