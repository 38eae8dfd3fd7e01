"""A private Ray head in its own processes, for tests that need another cluster shape than
the session's (exactly 2 CPUs, another venv's Python) or that drive ``qlp`` as a user does.

``ray start --head --block`` on free ports in its own temp dir, with its own auth token:
the test process stays the session cluster's driver, and ``qlp`` commands reach the
private head through ``RAY_ADDRESS``. Stopping it (SIGTERM to ``--block``) ends only its
own processes, never ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers.ray_start import free_port

RAY_STARTED = "Ray runtime started"


@dataclass
class PrivateHead:
    address: str  # GCS, for RAY_ADDRESS
    dashboard_url: str | None  # the Jobs API, when started with the dashboard
    log: Path


def kill_leftovers(marker: str) -> None:
    """Processes whose command line names ``marker`` (the head's temp dir), by pid."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@contextlib.contextmanager
def private_head(
    env: dict[str, str],
    temp_dir: Path,
    *,
    num_cpus: int,
    dashboard: bool = False,
    python: str | None = None,
    cwd: Path | None = None,
    start_timeout_s: float = 180,
) -> Iterator[PrivateHead]:
    """A running private head; ``env`` is the environment of its processes (include the
    Ray token there and in every client's env). ``python`` runs it (another venv's, for
    its workers), from ``cwd`` (outside the checkout, so nothing imports the checkout)."""
    from qlp_ray.core.config import QLPConfig
    from qlp_ray.core.runtime import serve_env

    port = free_port()
    dash_port = free_port() if dashboard else None
    cmd = [python or sys.executable, "-c", "from ray.scripts.scripts import main; main()",
           "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
           f"--dashboard-agent-listen-port={free_port()}",
           f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]  # fmt: skip
    if dashboard:
        cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}"]  # fmt: skip
    else:
        cmd += ["--include-dashboard=false"]
    # the Serve processes of the head get what `qlp serve`'s own `ray start` would give them
    head_env = {**env, **serve_env(QLPConfig())}
    log = temp_dir.parent / f"{temp_dir.name}_head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=head_env,
                                cwd=cwd, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + start_timeout_s
        while RAY_STARTED not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"private Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{dash_port}" if dashboard else None
        yield PrivateHead(f"127.0.0.1:{port}", url, log)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        kill_leftovers(str(temp_dir))


def user_env(home: Path, token: str, bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """A clean shell's environment: ``bin_dir`` (default: this venv's) first on PATH, no
    PYTHONPATH, ``QLP_HOME``, offline hubs, and the private head's Ray token (nothing is
    written to ~/.ray)."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "QLP_EMBEDDING_CACHE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        PATH=f"{bin_dir or Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        QLP_HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
    )
    env.update(extra)
    return env
