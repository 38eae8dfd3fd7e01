"""Adapter evaluation: perplexity, exact match, F1, BLEU, ROUGE and latency on a domain's
eval set, a grade A–F with recommendations, a comparison against a baseline, and the
leaderboard. No Ray.
"""

from qlp_ray.evaluate.leaderboard import Leaderboard
from qlp_ray.evaluate.report import EvaluationReport, build_report, compare
from qlp_ray.evaluate.runner import evaluate_model, load_eval_set

__all__ = [
    "EvaluationReport",
    "Leaderboard",
    "build_report",
    "compare",
    "evaluate_model",
    "load_eval_set",
]
