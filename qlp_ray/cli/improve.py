"""``qlp improve``: the audit log, explicit promotions and rollbacks."""

from __future__ import annotations

import json

import typer

from qlp_ray.cli.common import console, fail, get_config, stdout_for_json
from qlp_ray.core.errors import QLPError
from qlp_ray.improve.engines import build_orchestrator, join_or_start_ray
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.store import Registry

app = typer.Typer(
    help="Continual improvement: one cycle (--once), the orchestrator, audit, promote, rollback.",
    invoke_without_command=True,
)

# `qlp improve --once` exit status when every domain it looked at was busy (another
# orchestrator holds its lease): nothing was done, so a script or cron job can tell.
EXIT_ALL_BUSY = 3


def cycle_exit_code(actions: list[str]) -> int:
    """0 when the cycle did something or had nothing due; EXIT_ALL_BUSY when every domain
    it reached was held by another orchestrator."""
    return EXIT_ALL_BUSY if actions and all(a == "busy" for a in actions) else 0


@app.callback()
def improve(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Run one cycle here and print decisions."),
    domain: list[str] = typer.Option(None, "--domain", help="Only these domains (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decisions as JSON."),
    wait: float | None = typer.Option(
        None,
        "--wait",
        min=0,
        help="Seconds this cycle waits for an experiment it starts to decide "
        "(default improve.experiment_timeout_s; 0 = decide in a later cycle).",
    ),  # fmt: skip
) -> None:
    """Run one continual-learning cycle with progress and a decision report.

    Exits 3 when every domain was busy (another orchestrator holds its lease)."""
    if ctx.invoked_subcommand is not None:
        return
    if not once:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    from dataclasses import asdict

    from rich.table import Table

    cfg = get_config()
    if wait is not None:
        cfg = cfg.model_copy(update={"improve": cfg.improve.model_copy(
            update={"experiment_timeout_s": wait})})  # fmt: skip
    try:
        with stdout_for_json(as_json):
            orch = build_orchestrator(cfg, progress=lambda m: console.print(f"[dim]•[/] {m}"))
            outcomes = orch.run_cycle(domain or None)
    except QLPError as exc:
        fail(str(exc))
        return
    code = cycle_exit_code([o.action for o in outcomes])
    if as_json:
        typer.echo(json.dumps([asdict(o) for o in outcomes], indent=1, default=str))
        raise typer.Exit(code)
    table = Table(title="improvement cycle")
    for col in ("domain", "decision", "why", "numbers"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        nums = {k: round(v, 4) if isinstance(v, float) else v for k, v in o.numbers.items()}
        table.add_row(o.domain, o.action, o.reason, json.dumps(nums, default=str))
    console.print(table)
    if code:
        console.print("every domain is busy: another orchestrator holds its lease (exit 3)")
        raise typer.Exit(code)


def _registry():

    return Registry(get_config())


@app.command("daemon")
def daemon() -> None:
    """Start the restartable orchestrator actor and cycle every improve.interval_s (Ctrl-C)."""
    import ray

    from actors.orchestrator import start_orchestrator  # lazy: loads ray

    cfg = get_config()
    join_or_start_ray(cfg)
    actor = start_orchestrator(cfg)
    done = actor.run_forever.remote()
    console.print(f"orchestrator running, a cycle every {cfg.improve.interval_s:.0f} s")
    try:
        ray.get(done)
    except KeyboardInterrupt:
        ray.get(actor.stop.remote())
        console.print(f"stopped after {ray.get(done)} cycles")


@app.command("audit")
def audit(
    adapter_id: str | None = typer.Option(None, "--adapter", help="Only this adapter."),
    kind: list[str] = typer.Option(None, "--kind", help="sign, verify, promote, rollback, ..."),
    last: int = typer.Option(50, "--last", min=1, help="Most recent N events."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines."),
) -> None:
    """Show audit events (sign / verify / promote / rollback / key rotation) with numbers."""
    from datetime import UTC, datetime

    from rich.table import Table

    log = audit_for(get_config())
    if log is None:
        fail("the audit log is off (`store.audit: false`)")
        return
    events = log.events(adapter_id, tuple(kind) if kind else None)[-last:]
    if as_json:
        for e in events:
            typer.echo(json.dumps(e.model_dump(), sort_keys=True))
        return
    table = Table(title=f"audit log ({len(events)} events, {log.store.safe_url})")
    for col in ("id", "time (UTC)", "kind", "adapter", "version", "actor", "details"):
        table.add_column(col, overflow="fold")
    for e in events:
        when = datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        details = json.dumps(e.payload, sort_keys=True) if e.payload else ""
        table.add_row(str(e.id), when, e.kind, e.adapter_id or "", str(e.version or ""),
                      e.actor or "", details)  # fmt: skip
    console.print(table)


@app.command("rollback")
def rollback(
    adapter_id: str = typer.Argument(..., help="Adapter id."),
    version: int = typer.Argument(..., help="The older version to make current."),
    reason: str = typer.Option("manual rollback", help="Recorded in the audit log."),
) -> None:
    """Explicitly make an older signed version current (audited)."""

    try:
        reg = _registry()
        reg.verify(adapter_id, version)  # never point at something that does not verify
        reg.rollback(adapter_id, version, reason=reason)
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"{adapter_id}: rolled back to v{version}")


@app.command("promote")
def promote(
    adapter_id: str = typer.Argument(..., help="Adapter id."),
    version: int = typer.Argument(..., help="The version to make current."),
    reason: str = typer.Option("manual promotion", help="Recorded in the audit log."),
) -> None:
    """Make a verified version current (a newer one: promotion; an older one: rollback)."""

    try:
        reg = _registry()
        reg.verify(adapter_id, version)
        reg.set_current(adapter_id, version, reason=reason)
    except QLPError as exc:
        fail(str(exc))
        return
    console.print(f"{adapter_id}: v{version} is current")
