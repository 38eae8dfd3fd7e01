"""Deterministic generator of the bundled synthetic sample data.

Run ``python -m qlp_ray.data.synth --out qlp_ray/data/samples`` to rewrite
``<domain>.train.jsonl`` and ``<domain>.heldout.jsonl`` for every domain. The same seed always
yields byte-identical files. Held-out records never share an instruction with train records.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from qlp_ray.data.templates import CONTEXTS, DOMAIN_TEMPLATES, DomainTemplates

logger = logging.getLogger(__name__)

DEFAULT_SEED = 20261121
DEFAULT_TRAIN = 240
DEFAULT_HELDOUT = 48
MAX_OUTPUT_CHARS = 400
INPUT_PROBABILITY = 0.3
LOW_SCORE_PROBABILITY = 0.05


def _fill(template: str, values: dict) -> str:
    return template.format(**values)


def _choose_values(rng: random.Random, slots: dict[str, list]) -> dict:
    values = {name: rng.choice(pool) for name, pool in slots.items()}
    values["ctx"] = rng.choice(CONTEXTS)
    res = values.get("res")
    if isinstance(res, str):  # type name for code snippets: "orders" -> "Order"
        values["res_t"] = res[:-1].title() if res.endswith("s") else res.title()
    return values


def _score(rng: random.Random) -> float:
    if rng.random() < LOW_SCORE_PROBABILITY:
        return round(rng.uniform(0.6, 0.85), 3)
    return round(rng.uniform(0.85, 1.0), 3)


def generate_domain(
    domain: str,
    n_train: int = DEFAULT_TRAIN,
    n_heldout: int = DEFAULT_HELDOUT,
    seed: int = DEFAULT_SEED,
) -> tuple[list[dict], list[dict]]:
    """Return ``(train, heldout)`` records for one domain, with disjoint instructions."""
    spec: DomainTemplates = DOMAIN_TEMPLATES[domain]
    # str seeds hash deterministically in random.Random (unlike hash(), not salted per process)
    rng = random.Random(f"{seed}:{domain}")
    wanted = n_train + n_heldout
    by_instruction: dict[str, dict] = {}
    attempts = 0
    while len(by_instruction) < wanted:
        attempts += 1
        if attempts > wanted * 200:
            raise RuntimeError(
                f"templates for {domain!r} yield only {len(by_instruction)} distinct "
                f"instructions, {wanted} wanted"
            )
        task = rng.choice(spec.tasks)
        values = _choose_values(rng, spec.slots)
        instruction = _fill(rng.choice(task.instructions), values)
        if instruction in by_instruction:
            continue
        output = _fill(task.output, values)
        if len(output) > MAX_OUTPUT_CHARS:
            raise ValueError(
                f"{domain} answer is {len(output)} chars (max {MAX_OUTPUT_CHARS}): {output!r}"
            )
        use_input = spec.inputs and rng.random() < INPUT_PROBABILITY
        by_instruction[instruction] = {
            "instruction": instruction,
            "input": rng.choice(spec.inputs) if use_input else "",
            "output": output,
            "domain": domain,
            "validation_score": _score(rng),
        }
    records = list(by_instruction.values())
    rng.shuffle(records)
    return records[:n_train], records[n_train:]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n")


def generate_all(
    out_dir: Path,
    n_train: int = DEFAULT_TRAIN,
    n_heldout: int = DEFAULT_HELDOUT,
    seed: int = DEFAULT_SEED,
) -> dict[str, tuple[int, int]]:
    """Write every domain's train and held-out files; return ``{domain: (n_train, n_heldout)}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for domain in DOMAIN_TEMPLATES:
        train, heldout = generate_domain(domain, n_train, n_heldout, seed)
        write_jsonl(out_dir / f"{domain}.train.jsonl", train)
        write_jsonl(out_dir / f"{domain}.heldout.jsonl", heldout)
        counts[domain] = (len(train), len(heldout))
        logger.info("wrote %s: %d train, %d held-out", domain, len(train), len(heldout))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "samples")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="records per domain")
    parser.add_argument("--heldout", type=int, default=DEFAULT_HELDOUT, help="records per domain")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate_all(args.out, args.train, args.heldout, args.seed)


if __name__ == "__main__":
    main()
