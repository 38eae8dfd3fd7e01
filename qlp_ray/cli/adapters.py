"""``qlp adapters``: list, verify, show and retire registered adapters."""

from __future__ import annotations

import json

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.errors import QLPError
from qlp_ray.registry.store import Registry

app = typer.Typer(help="Signed, versioned LoRA adapters in the registry.", no_args_is_help=True)


@app.command("list")
def list_adapters(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    all_versions: bool = typer.Option(False, "--all", help="Every version, not just current."),
    kind: str | None = typer.Option(
        None, "--kind", help="Only this kind: adapter, reward_model or meta_init."
    ),
) -> None:
    """List adapters with domain, version, kind and whether their signature verifies.

    Kinds: ``adapter`` is served and routed to; ``reward_model`` and ``meta_init`` are
    training artefacts (a PPO reward, a meta-learned starting point), never served."""
    from rich.table import Table

    try:
        records = Registry(get_config()).list(all_versions=all_versions)
    except QLPError as exc:
        fail(str(exc))
        return
    if kind is not None:
        records = [r for r in records if r.kind == kind]
    if as_json:
        typer.echo(json.dumps([r.summary() for r in records], indent=1))
        return
    if not records:
        console.print("no adapters registered")
        return
    table = Table(title="adapters")
    columns = ("id", "domain", "version", "kind", "signed", "base model", "eval loss", "path")
    for column in columns:
        table.add_column(column, overflow="fold")  # ids and paths must stay copyable
    for r in records:
        loss = r.metadata.get("metrics", {}).get("eval_loss_after")
        table.add_row(
            r.adapter_id,
            r.domain,
            f"v{r.version}",
            r.kind,
            "[green]yes[/]" if r.signed else f"[red]no[/] ({r.problem})",
            r.base_model,
            f"{loss:.4f}" if isinstance(loss, int | float) else "",
            str(r.path),
        )
    console.print(table)


@app.command("verify")
def verify(
    adapter_id: str = typer.Argument(..., help="Adapter id."),
    version: int | None = typer.Option(None, "--version", help="Version (default: current)."),
    base_model: str | None = typer.Option(None, "--base-model", help="Expected base model."),
) -> None:
    """Check signature, signing key, every file hash and the labels of one adapter."""

    try:
        record = Registry(get_config()).verify(adapter_id, version, expected_base_model=base_model)
    except QLPError as exc:
        fail(f"verification failed: {exc}")
        return
    state = "verified" if record.signed else "UNSIGNED (allowed: registry.require_signature=false)"
    console.print(f"{record.adapter_id} v{record.version}: {state}")


@app.command("show")
def show(
    adapter_id: str = typer.Argument(..., help="Adapter id."),
    version: int | None = typer.Option(None, "--version", help="Version (default: current)."),
    full: bool = typer.Option(False, "--full", help="Print the centroid vector in full."),
) -> None:
    """Print an adapter's qlp.json metadata."""

    try:
        record = Registry(get_config()).get(adapter_id, version)
    except QLPError as exc:
        fail(str(exc))
        return
    info = dict(record.metadata)
    centroid = info.get("centroid")
    if isinstance(centroid, list) and not full:
        info["centroid"] = f"<{len(centroid)} floats; --full to print>"
    info["_signed"] = record.signed
    if record.problem:
        info["_problem"] = record.problem
    console.print_json(json.dumps(info))


@app.command("retire")
def retire(
    adapter_id: str = typer.Argument(..., help="Adapter id."),
    reason: str = typer.Option("manual retirement", help="Recorded in the audit log."),
) -> None:
    """Stop serving and routing an adapter (its versions stay stored; `qlp improve promote`
    serves it again). A running server follows within `router.generation_poll_s`."""

    try:
        version = Registry(get_config()).retire(adapter_id, reason=reason)
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"{adapter_id}: retired (was serving v{version})")
