"""Evaluation stage: metrics, grading/recommendations, and the leaderboard (no Ray)."""

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
