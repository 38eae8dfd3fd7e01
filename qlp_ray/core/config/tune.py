"""``optimize`` (read by ``qlp_ray.optimize``) and ``tune`` (read by ``qlp_ray.tune``): the
two commands that wrap training runs or trained models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qlp_ray.core.config.base import Section


class OptimizeConfig(Section):
    method: Literal["dynamic-int8", "static-int8", "magnitude", "structured"] = Field(
        "dynamic-int8", description="Optimisation `qlp optimize` applies by default."
    )
    sparsity: float = Field(0.5, ge=0.1, le=0.9, description="Target sparsity of pruning.")
    calibration_samples: int = Field(
        32, ge=1, description="Training texts used to calibrate static INT8 activation scales."
    )
    eval_samples: int = Field(
        32, ge=1, description="Held-out texts for the before/after size-speed-quality report."
    )
    repeats: int = Field(3, ge=1, description="Timed passes over the eval texts per model.")


class TuneConfig(Section):
    trials: int = Field(8, ge=1, description="Trials (Ray Train runs) per `qlp tune`.")
    steps: int = Field(40, ge=1, description="Training steps per trial.")
    eval_every: int = Field(10, ge=1, description="Steps between held-out evals (ASHA rungs).")
    grace_period: int = Field(1, ge=1, description="Evaluations before ASHA may stop a trial.")
    max_concurrent: int = Field(
        1, ge=1, description="Trials running at the same time (each holds its worker CPUs)."
    )
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of each trial's Ray Train worker.")
    seed: int = Field(0, description="Seed of the Optuna sampler.")
    optuna_storage: str = Field(
        "",
        description="Optuna RDB storage of the studies (`optuna-dashboard <storage>` shows "
        "them): '' = sqlite:///<home>/optuna.db, or a PostgreSQL URL on a cluster.",
    )
