"""``qlp data``: build per-domain training sets from capsules and feedback."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qlp_ray.cli.common import console, fail, get_config
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.builder import build_datasets, load_raw_capsules
from qlp_ray.data.capsules import SAMPLES_DIR
from qlp_ray.registry.s3 import S3ArtifactStore
from qlp_ray.route.domains import DomainClassifier
from qlp_ray.route.embeddings import get_embedder
from qlp_ray.store.database import FeedbackStore

app = typer.Typer(
    help="Build per-domain SFT, preference and reward datasets.", no_args_is_help=True
)


def load_reference(paths: list[Path]) -> tuple[list[str], list[str]]:
    """Labelled texts for the domain centroids: JSONL rows with ``domain`` and one of
    ``text`` / ``instruction`` / ``prompt``."""

    texts, domains = [], []
    for path in paths:
        if not path.is_file():
            raise InvalidRequest(f"reference file not found: {path}")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            text = row.get("text") or row.get("instruction") or row.get("prompt")
            if not text or not row.get("domain"):
                raise InvalidRequest(f"{path}:{lineno}: reference rows need text and domain")
            texts.append(text)
            domains.append(row["domain"])
    return texts, domains


@app.command("build")
def build(
    capsules: Path = typer.Argument(..., help="Capsule JSONL (prompt, context, output, ...)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output dir (default <home>/datasets/latest)."
    ),
    reference: list[Path] = typer.Option(
        None, "--reference", "-r", help="Labelled JSONL for domain centroids (repeatable)."
    ),
    min_score: float = typer.Option(None, help="Quality threshold (default improve.*)."),
    min_examples: int = typer.Option(None, help="Examples a domain needs (default improve.*)."),
    feedback: bool = typer.Option(True, help="Add preference pairs and rewards from the store."),
    upload: bool = typer.Option(False, help="Upload the result to s3.artifacts_uri."),
) -> None:
    """Classify capsules by domain, filter by quality, write datasets and a per-domain report."""
    from rich.table import Table

    cfg = get_config()
    imp = cfg.improve
    raw = load_raw_capsules(capsules)
    refs = list(reference or []) or sorted(SAMPLES_DIR.glob("*.train.jsonl"))
    texts, domains = load_reference(refs)
    labelled = [c for c in raw if c.domain]
    texts += [c.text() for c in labelled]
    domains += [c.domain for c in labelled]
    if not texts:
        fail("no labelled examples for the domain centroids: pass --reference FILE")
    embed = get_embedder(cfg.router.embedding_model).encode
    classifier = DomainClassifier.fit(
        texts, domains, embed, temperature=imp.classifier_temperature,
        prior_strength=imp.keyword_prior_strength,
    )  # fmt: skip
    store = None
    if feedback:
        store = FeedbackStore.from_config(cfg)
    out_dir = out or cfg.paths.root / "datasets" / "latest"
    with console.status(f"building datasets from {len(raw)} capsules"):
        report = build_datasets(
            raw, classifier, out_dir,
            min_score=imp.min_validation_score if min_score is None else min_score,
            min_examples=imp.min_examples_per_domain if min_examples is None else min_examples,
            heldout_fraction=imp.heldout_fraction, store=store,
        )  # fmt: skip
    table = Table(title=f"datasets in {out_dir} (score > {report.min_score})")
    for col in ("domain", "capsules", "kept", "low q.", "dups", "train", "heldout", "pairs",
                "rewards", "mean score", "ready"):  # fmt: skip
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d, r in sorted(report.domains.items()):
        counts = (r.capsules, r.kept, r.below_quality, r.duplicates, r.train, r.heldout,
                  r.preference_pairs, r.reward_prompts)  # fmt: skip
        score = "-" if r.mean_score is None else f"{r.mean_score:.3f}"
        ready = "[green]yes[/]" if r.ready else f"[yellow]no (<{report.min_examples})[/]"
        table.add_row(d, *(str(v) for v in counts), score, ready)
    console.print(table)
    if report.label_agreement is not None:
        console.print(f"classifier agrees with given labels on {report.label_agreement:.1%}")
    if upload:
        if not cfg.s3.artifacts_uri:
            fail("--upload needs `s3.artifacts_uri` in the config")

        name = f"build-{int(Path(out_dir, 'report.json').stat().st_mtime)}"
        S3ArtifactStore.from_uri(cfg.s3.artifacts_uri, cfg.s3).upload("datasets", name, out_dir)
        console.print(f"uploaded to {cfg.s3.artifacts_uri} as datasets/{name}")
