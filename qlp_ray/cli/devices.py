"""``qlp devices``: the compute devices qlp_ray can use, and how loaded they are.

Without ``--cluster`` it discovers this machine's devices directly (no Ray) and measures
CPU utilization over a short interval; queue depth exists only under a scheduler.
With ``--cluster`` it asks the running scheduler actor for every node's devices.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.runtime import cluster_address, connect_existing
from qlp_ray.hardware.discovery import discover_devices

app = typer.Typer(help="List compute devices (CPU cores, OpenVINO, CUDA/XPU).")


def _cpu_utilization(cores: list[int], interval: float = 0.3) -> float | None:
    import psutil

    per_cpu = psutil.cpu_percent(interval=interval, percpu=True)
    picked = [per_cpu[c] for c in cores if c < len(per_cpu)] or per_cpu
    return round(sum(picked) / len(picked) / 100.0, 3) if picked else None


def local_rows() -> list[dict[str, Any]]:
    """One row per device discovered on this machine."""

    devices = discover_devices()
    host = socket.gethostname()
    all_cores = sorted({c for d in devices for c in d.cores})
    rows = []
    for d in devices:
        util = None
        if d.target == "cpu" or d.device_class == "ov_cpu":
            util = _cpu_utilization(list(d.cores) or all_cores)
        rows.append(
            {
                "node": host,
                "kind": d.key,
                "class": d.device_class,
                "backend": d.backend,
                "resource": d.resource,
                "avx512": d.avx512,
                "cores": list(d.cores),
                "utilization": util,
                "queue": None,
                "description": d.description,
            }
        )
    return rows


def cluster_rows(namespace: str) -> list[dict[str, Any]]:
    """Rows from the running scheduler actor (every node)."""
    import ray

    from actors.device import SCHEDULER_NAME  # lazy: loads ray

    address = cluster_address(get_config())
    if address is None:
        raise LookupError("no running Ray cluster (set RAY_ADDRESS or start one with `qlp serve`)")
    ray.init(address=address, namespace=namespace, log_to_driver=False)
    try:
        scheduler = ray.get_actor(SCHEDULER_NAME, namespace=namespace)
    except ValueError as exc:
        raise LookupError(f"no {SCHEDULER_NAME!r} actor in namespace {namespace!r}") from exc
    return [
        {
            "node": r["node_id"][:12],
            "kind": r["key"],
            "class": r["device_class"],
            "backend": r["backend"],
            "resource": r["resource"],
            "avx512": r["avx512"],
            "cores": r["cores"],
            "utilization": r["utilization"],
            "queue": r["queue"],
            "alive": r["alive"],
            "description": r["description"],
        }
        for r in ray.get(scheduler.devices.remote())
    ]


def _short(device_id: str) -> str:
    """``<node id>/<device key>`` with the node id cut to 8 characters."""
    node, _, key = device_id.partition("/")
    return f"{node[:8]}/{key}"


def workload_rows(workloads: dict[str, dict[str, Any]], now: float) -> dict[str, dict]:
    """The scheduler's device workloads (``embedding``, ``vector_search``...) as placement
    records ``workload:<kind>``: running or idle, the devices that ran them, how many."""
    rows = {}
    for kind, w in sorted(workloads.items()):
        top = max(w["devices"].items(), key=lambda kv: kv[1])[0] if w["devices"] else "-/-"
        rows[f"workload:{kind}"] = {
            "workload": kind,
            "state": "running" if w["running"] else "idle",
            "devices": w["devices"],
            "done": w["done"],
            "running": w["running"],
            "failed": w["failed"],
            "reason": f"{w['done']} done, {w['failed']} failed; mostly on {_short(top)}; last "
            f"started {max(now - w['last'], 0):.0f} s ago",
        }
    return rows


def _show_placements(as_json: bool) -> None:
    """The scheduler's live placements: serving's CPU share, each training run, and the
    device workloads (router embedding and vector search...) it placed."""
    import time

    from rich.table import Table

    from actors.launch import device_workloads, placements  # lazy: loads ray

    if not connect_existing(get_config()):
        fail("no running Ray cluster (set RAY_ADDRESS or start one with `qlp serve`)")
        return
    hw = get_config().hardware
    live = placements(hw)
    live.update(workload_rows(device_workloads(hw), time.time()))
    if as_json:
        console.print_json(json.dumps(live))
        return
    table = Table(title="placements (qlp-scheduler)")
    for col in ("id", "workload", "state", "resources"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for run_id, r in live.items():
        if r["workload"] == "serve":
            res = ", ".join(f"{k} {v:g} CPU" for k, v in r["cpus"].items())
        elif run_id.startswith("workload:"):
            res = ", ".join(f"{_short(d)} x{n}" for d, n in r["devices"].items())
        else:
            res = f"{r['workers']}/{r['requested_workers']} x {r['cpus_per_worker']:g} CPU"
        table.add_row(run_id, r["workload"], r["state"], res, r["reason"])
    console.print(table if live else "no placements: nothing is served, training or computing")


@app.command("devices")
def devices(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    cluster: bool = typer.Option(
        False, "--cluster", help="Ask the running scheduler actor (all nodes) instead."
    ),
    show_placements: bool = typer.Option(
        False,
        "--placements",
        help="Show where the scheduler placed serving, every training run (and why a "
        "run waits) and the device workloads it ran (router embedding, vector search) "
        "instead of devices.",
    ),
) -> None:
    """List devices: node, kind, class, AVX-512, utilization, queue."""
    from rich.table import Table

    if show_placements:
        _show_placements(as_json)
        return
    if cluster:
        try:
            rows = cluster_rows(get_config().hardware.namespace)
        except (LookupError, ConnectionError) as exc:
            fail(f"{exc}; start the hardware actors with actors.launch.start_hardware()")
            return
    else:
        rows = local_rows()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="qlp_ray devices")
    for col in ("node", "kind", "class", "AVX-512", "utilization", "queue", "backend"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold")
    for r in rows:
        util = "-" if r["utilization"] is None else f"{100 * r['utilization']:.0f}%"
        queue = "-" if r["queue"] is None else str(r["queue"])
        table.add_row(
            r["node"],
            r["kind"],
            r["class"],
            "yes" if r["avx512"] else "no",
            util,
            queue,
            r["backend"],
            r["description"],
        )
    console.print(table)
