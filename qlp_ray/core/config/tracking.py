"""``tracking`` (read by ``qlp_ray.train.tracking``): where training runs are logged (MLflow)."""

from __future__ import annotations

from pydantic import Field

from qlp_ray.core.config.base import Section


class TrackingConfig(Section):
    enabled: bool = Field(
        True,
        description="Log every training run and Tune trial to MLflow (params, per-step metrics, "
        "the registered adapter); needs the `tracking` extra (mlflow).",
    )
    mlflow_uri: str = Field(
        "",
        description="MLflow tracking URI: '' = sqlite:///<home>/mlflow.db (artifacts in "
        "<home>/mlruns), or a server (http://host:5000) / database URL shared by a cluster.",
    )
    experiment: str = Field("qlp", min_length=1, description="MLflow experiment of the runs.")
