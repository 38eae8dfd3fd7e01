"""``qlp label``: the active-learning label queue."""

from __future__ import annotations

import json

import typer

from qlp_ray.cli.common import batch_encoder, console, get_config
from qlp_ray.data.label_queue import next_to_label
from qlp_ray.store.database import FeedbackStore

app = typer.Typer(help="Active learning: which requests to label next.", no_args_is_help=True)


@app.command("next")
def next_batch(
    k: int = typer.Option(None, "--k", "-k", min=1, help="How many (default active_learning.k)."),
    method: str = typer.Option(
        None, help="entropy | margin | least_confidence | mc_dropout | diversity | random."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """Show the unlabelled requests whose labels would help most, with priorities."""
    from rich.table import Table

    cfg = get_config()
    store = FeedbackStore.from_config(cfg)

    embed = batch_encoder(cfg)  # the pool's prompts: on device actors per router.offload
    items = next_to_label(store, embed, cfg.active_learning, k=k, method=method)
    if as_json:
        for item in items:
            console.print_json(json.dumps(item.to_dict()))
        return
    if not items:
        console.print("nothing to label: every stored request has feedback")
        return
    table = Table(title=f"next {len(items)} to label ({items[0].method}, store {store.safe_url})")
    for col in ("#", "priority", "score", "domain", "request", "prompt"):
        table.add_column(col)
    colour = {"high": "red", "medium": "yellow", "low": "green"}
    for i, it in enumerate(items, 1):
        table.add_row(str(i), f"[{colour[it.priority]}]{it.priority}[/]", f"{it.score:.4f}",
                      it.domain or "-", it.request_id[:12], it.prompt[:60])  # fmt: skip
    console.print(table)
