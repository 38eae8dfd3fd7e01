"""``evaluation``: grades, pass/fail limits and the leaderboard (read by ``qlp_ray.evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from qlp_ray.core.config.base import Section

GRADES = ("A", "B", "C", "D")


class EvaluationConfig(Section):
    grade_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"A": 0.85, "B": 0.7, "C": 0.55, "D": 0.4},
        description="Lowest quality score (0-1, mean of score_metrics) for grades A-D; else F.",
    )
    perplexity_grades: dict[str, float] = Field(
        default_factory=lambda: {"A": 5.0, "B": 10.0, "C": 20.0, "D": 50.0},
        description="Highest perplexity for grades A-D when no task metric was measured.",
    )
    pass_grade: Literal["A", "B", "C", "D"] = Field("C", description="Lowest passing grade.")
    max_perplexity: float = Field(100.0, gt=1, description="Fail above this perplexity.")
    max_latency_p95_ms: float = Field(2000.0, gt=0, description="Fail above this p95 latency.")
    score_metrics: list[str] = Field(
        default_factory=lambda: ["exact_match", "token_f1", "rougeL", "bleu", "f1_macro"],
        description="Task metrics averaged into the quality score (BLEU is divided by 100).",
    )
    min_train_examples: int = Field(
        200, ge=1, description="Fewer training examples than this triggers 'more data'."
    )
    overfit_gap: float = Field(
        0.3, ge=0, description="eval_loss - train_loss above this counts as overfitting."
    )
    regression_tolerance: float = Field(
        0.01, ge=0, description="Relative change below this counts as 'same' vs the baseline."
    )
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per evaluation prompt.")
    leaderboard_path: Path | None = Field(
        None, description="Leaderboard SQLite file (None = <home>/evaluations/leaderboard.db)."
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> EvaluationConfig:
        for name, table, descending in (
            ("grade_thresholds", self.grade_thresholds, True),
            ("perplexity_grades", self.perplexity_grades, False),
        ):
            if sorted(table) != list(GRADES):
                raise ValueError(
                    f"`evaluation.{name}` needs exactly the keys A, B, C, D (got {sorted(table)})."
                )
            values = [table[g] for g in GRADES]
            if values != sorted(values, reverse=descending):
                order = "decrease" if descending else "increase"
                raise ValueError(f"`evaluation.{name}` must {order} from A to D (got {table}).")
        return self
