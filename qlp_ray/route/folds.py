"""Grouped cross-validation folds for the router: no group on both sides of a split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qlp_ray.core.errors import InvalidRequest


def group_kfold(
    groups: Sequence[str], k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) index splits with no group on both sides, balanced by row count.

    Groups are shuffled (seeded), then placed largest first into the fold with fewest rows.
    """
    uniq = sorted(set(groups))
    if not 2 <= k <= len(uniq):
        raise InvalidRequest(
            f"--folds must be between 2 and the number of groups ({len(uniq)}), got {k}"
        )
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    order.sort(key=lambda g: -sizes[g])  # stable: ties keep the shuffled order
    fold_of: dict[str, int] = {}
    load = [0] * k
    for g in order:
        f = int(np.argmin(load))
        fold_of[g] = f
        load[f] += sizes[g]
    folds = np.array([fold_of[g] for g in groups])
    idx = np.arange(len(groups))
    return [(idx[folds != f], idx[folds == f]) for f in range(k)]


def calibration_folds(groups: Sequence[str], calib_folds: int) -> int:
    """Grouped calibration folds :func:`fit_learned_router` runs (0: none, too few groups)."""
    n_groups = len(set(groups))
    return min(calib_folds, n_groups) if n_groups >= 2 and calib_folds >= 2 else 0
