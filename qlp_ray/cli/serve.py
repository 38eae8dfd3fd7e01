"""``qlp serve`` / ``qlp shutdown``: run the Serve application in the background, stop it."""

from __future__ import annotations

import typer

from qlp_ray.cli.common import console, get_config
from qlp_ray.core.runtime import cluster_note, stop_local_cluster

app = typer.Typer(help="Serve the adapters over an OpenAI-compatible HTTP API on Ray Serve.")


@app.command("serve")
def serve_cmd(
    host: str | None = typer.Option(None, "--host", help="Bind address (default: serve.host)."),
    port: int | None = typer.Option(None, "--port", help="HTTP port (default: serve.port)."),
) -> None:
    """Deploy the app on Ray Serve (reusing or starting a local cluster) and return."""
    from qlp_ray.serve.app import deploy  # lazy: loads ray

    cfg = get_config().model_copy(deep=True)
    if host is not None:
        cfg.serve.host = host
    if port is not None:
        cfg.serve.port = port
    with console.status(f"deploying app {cfg.serve.app_name!r} on Ray Serve..."):
        url = deploy(cfg, persistent=True)
    console.print(f"[green]serving[/] at [bold]{url}[/] (OpenAI API under {url}/v1)")
    from actors.launch import placements  # lazy: loads ray
    from qlp_ray.models.precision import planned_dtype

    serving = placements(cfg.hardware).get("serve")
    if serving:
        console.print(f"placement: {serving['reason']}")
        for name, device in serving.get("devices", {}).items():
            console.print(f"placement: {device['reason']}")
            if name == "compositor":
                dtype = planned_dtype(cfg.model.dtype, device["device_class"])
                console.print(f"placement: the base model computes in {dtype} (model.dtype)")
    for line in cluster_note(cfg):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print("stop it with [bold]qlp shutdown[/] (and the Ray cluster: --stop-ray)")


@app.command("shutdown")
def shutdown_cmd(
    stop_ray: bool = typer.Option(
        False, "--stop-ray", help="Also stop the Ray cluster `qlp serve` started (only that one)."
    ),
) -> None:
    """Delete the app (and Serve when nothing else runs on it)."""
    from qlp_ray.serve.app import shutdown  # lazy: loads ray

    cfg = get_config()
    if shutdown(cfg):
        console.print(f"app {cfg.serve.app_name!r} shut down")
    else:
        console.print(f"no app {cfg.serve.app_name!r} is running")
    if stop_ray:
        import ray

        ray.shutdown()
        if stop_local_cluster(cfg):
            console.print("Ray cluster stopped")
        else:
            console.print("qlp started no Ray cluster for this home; nothing else is stopped")
