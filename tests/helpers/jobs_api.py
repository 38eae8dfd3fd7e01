"""A config whose Jobs API is a closed port, for the job routes' tests without Ray."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

ADMIN = {"authorization": "Bearer admin-secret"}


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jobs_config(home: Path) -> Any:
    """User key ``user-key``, admin key ``admin-secret``, a Jobs API that refuses, 50 steps."""
    from qlp_ray.core.config import load_config

    return load_config(
        overrides={
            "paths": {"home": str(home)},
            "serve": {"api_key": "user-key", "admin_key": "admin-secret"},
            "jobs": {"dashboard_address": f"http://127.0.0.1:{closed_port()}", "max_steps": 50},
        },
        environ={},
    )
