"""Active learning vs random sampling: labels needed to reach a target routing accuracy.

Data: real GitHub issue titles by skill domain (``../shared/data/routing/dev.jsonl``),
embedded with the packaged MiniLM. Each repeat holds out whole repositories as the
test set (the router must handle projects it never saw); the rest is the unlabelled
pool. Starting from the same random seed labels, every method asks for ``--batch``
labels per round; after each round a softmax-regression classifier with input dropout
(torch) is retrained on the labelled set and scored on the test set. The target is
``--target-frac`` of the accuracy reached with the whole pool labelled (per repeat).

Methods: qlp_ray.data.active_learning — entropy, margin, least_confidence, mc_dropout
(dropout kept on for ``--passes`` forward passes), diversity (k-center greedy), and
random as the baseline. Prints mean labels to target, the ratio to random, and the
mean accuracy over the learning curve (area under it).

    PYTHONPATH=$PWD nice python benchmarks/active_learning.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from qlp_ray.data import active_learning as active

_REL = Path("shared") / "data" / "routing" / "dev.jsonl"
# ../shared next to the repository (main checkout), else /work/shared (git worktrees).
DEFAULT_DATA = next(
    (p for p in (Path(__file__).resolve().parents[2] / _REL, Path("/work") / _REL) if p.is_file()),
    Path(__file__).resolve().parents[2] / _REL,
)
METHODS = ("random", "entropy", "margin", "least_confidence", "mc_dropout", "diversity")


def load(path: Path) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    classes = sorted({r["domain"] for r in rows})
    y = np.array([classes.index(r["domain"]) for r in rows])
    repos = [r["source"].split("#")[0] for r in rows]
    return [r["text"] for r in rows], y, repos, classes


def grouped_split(repos: list[str], test_share: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean test mask holding out whole repositories (~``test_share`` of the rows)."""
    uniq = sorted(set(repos))
    rng.shuffle(uniq)
    test, n = set(), 0
    for repo in uniq:
        if n >= test_share * len(repos):
            break
        test.add(repo)
        n += sum(r == repo for r in repos)
    return np.array([r in test for r in repos])


class DropoutSoftmax:
    """Softmax regression on embeddings with input dropout (MC-dropout capable)."""

    def __init__(self, dim: int, classes: int, seed: int, dropout: float = 0.2) -> None:
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(dim, classes))

    def fit(self, x: np.ndarray, y: np.ndarray, steps: int = 150) -> DropoutSoftmax:
        opt = torch.optim.Adam(self.net.parameters(), lr=0.05, weight_decay=1e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        self.net.train()
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(self.net(xt) * 10.0, yt).backward()
            opt.step()
        return self

    @torch.no_grad()
    def probs(self, x: np.ndarray, passes: int = 0) -> np.ndarray:
        """``(n, C)`` with dropout off, or ``(passes, n, C)`` with dropout on."""
        xt = torch.from_numpy(x)
        if passes:
            self.net.train()
            return np.stack([torch.softmax(self.net(xt) * 10.0, 1).numpy() for _ in range(passes)])
        self.net.eval()
        return torch.softmax(self.net(xt) * 10.0, 1).numpy()


def run_curve(method, emb, y, pool, test, seed_idx, n_classes, batch, passes, seed):
    labelled = list(seed_idx)
    curve = []
    while True:
        model = DropoutSoftmax(emb.shape[1], n_classes, seed).fit(emb[labelled], y[labelled])
        acc = float((model.probs(emb[test]).argmax(1) == y[test]).mean())
        curve.append((len(labelled), acc))
        rest = [i for i in pool if i not in set(labelled)]
        if not rest:
            return curve
        kw = {}
        if method == "mc_dropout":
            kw["prob_samples"] = model.probs(emb[rest], passes=passes)
        elif method != "diversity":
            kw["probs"] = model.probs(emb[rest]).astype(np.float64)
        picks = active.select_batch(
            method, min(batch, len(rest)), embeddings=emb[rest],
            labelled_embeddings=emb[labelled], duplicate_threshold=None,
            seed=seed * 1000 + len(labelled), **kw,
        )  # fmt: skip
        labelled += [rest[p.index] for p in picks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed-labels", type=int, default=5)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--test-share", type=float, default=0.3)
    ap.add_argument("--target-frac", type=float, default=0.95)
    ap.add_argument("--passes", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from qlp_ray.route.embeddings import get_embedder

    texts, y, repos, classes = load(args.data)
    t0 = time.perf_counter()
    emb = get_embedder().encode(texts)
    secs = time.perf_counter() - t0
    print(f"{len(texts)} examples, {len(classes)} domains, embedded in {secs:.1f} s; "
          f"nearest-neighbour backend: {active.NN_BACKEND}")  # fmt: skip
    need: dict[str, list[int]] = {m: [] for m in METHODS}
    censored: dict[str, int] = {m: 0 for m in METHODS}
    auc: dict[str, list[float]] = {m: [] for m in METHODS}
    full_accs, t_methods = [], {m: 0.0 for m in METHODS}
    for rep in range(args.repeats):
        rng = np.random.default_rng(rep)
        test_mask = grouped_split(repos, args.test_share, rng)
        test, pool = np.flatnonzero(test_mask), [int(i) for i in np.flatnonzero(~test_mask)]
        seed_idx = [int(i) for i in rng.choice(pool, args.seed_labels, replace=False)]
        full = DropoutSoftmax(emb.shape[1], len(classes), rep).fit(emb[pool], y[pool])
        full_acc = float((full.probs(emb[test]).argmax(1) == y[test]).mean())
        target = args.target_frac * full_acc
        full_accs.append(full_acc)
        for m in METHODS:
            t1 = time.perf_counter()
            curve = run_curve(m, emb, y, pool, test, seed_idx, len(classes), args.batch,
                              args.passes, rep)  # fmt: skip
            t_methods[m] += time.perf_counter() - t1
            hit = next((n for n, a in curve if a >= target), None)
            need[m].append(hit if hit is not None else len(pool))
            censored[m] += hit is None
            auc[m].append(float(np.mean([a for _, a in curve])))
    pool_n = len(pool)
    print(f"\n{args.repeats} repeats, repository-grouped test split ({args.test_share:.0%}), "
          f"pool ~{pool_n}, seed {args.seed_labels} labels, batch {args.batch}")  # fmt: skip
    print(f"full-pool accuracy {np.mean(full_accs):.3f} ± {np.std(full_accs):.3f}; "
          f"target = {args.target_frac:.0%} of it per repeat\n")  # fmt: skip
    base = np.mean(need["random"])
    print(f"{'method':<18}{'labels to target':>18}{'vs random':>11}{'not reached':>13}"
          f"{'mean acc (AUC)':>16}{'time s':>8}")  # fmt: skip
    for m in METHODS:
        n = np.array(need[m])
        missed = f"{censored[m]}/{args.repeats}"
        print(f"{m:<18}{n.mean():>11.1f} ± {n.std():>4.1f}{n.mean() / base:>11.2f}"
              f"{missed:>13}{np.mean(auc[m]):>16.3f}{t_methods[m]:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
