"""``qlp ui``: the web UI (Streamlit) over a gateway's HTTP API."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from qlp_ray.cli.common import console, get_config
from qlp_ray.ui import APP_PATH, KEY_ENV, URL_ENV

app = typer.Typer()


@app.command("ui")
def ui(
    url: str = typer.Option(
        None, "--url", help="Gateway URL (default: this config's serve host and port)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the UI listens on."),
    port: int = typer.Option(8501, "--port", help="Port the UI listens on."),
) -> None:
    """Start the web UI: the training wizard and the admin console, on 127.0.0.1:8501.

    It reaches the platform only through the gateway's HTTP API. The API key it starts with
    is $QLP_UI_API_KEY, else this config's serve.admin_key (the sidebar can change both).
    """
    cfg = get_config()
    env = dict(os.environ)
    serve_host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    env[URL_ENV] = url or f"http://{serve_host}:{cfg.serve.port}"
    key = env.get(KEY_ENV) or cfg.serve.admin_key or cfg.serve.api_key or ""
    env[KEY_ENV] = key
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
        "--runner.magicEnabled", "false",
    ]  # fmt: skip
    console.print(f"qlp ui on http://{host}:{port} → gateway {env[URL_ENV]}")
    raise typer.Exit(subprocess.call(command, env=env))
