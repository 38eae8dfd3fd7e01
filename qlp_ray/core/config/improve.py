"""``improve``: the continual-learning loop (read by ``qlp_ray.improve``), and
``active_learning``: which unlabelled requests go to the label queue (read by
``qlp_ray.data.active_learning``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qlp_ray.core.config.base import Section


class ImproveConfig(Section):
    min_validation_score: float = Field(
        0.85, ge=0, le=1, description="Capsules need a validation score above this for SFT sets."
    )
    min_examples_per_domain: int = Field(
        500, ge=1, description="Training examples a domain needs before it gets an adapter."
    )
    heldout_fraction: float = Field(
        0.15, gt=0, lt=1, description="Share of each domain's SFT set held out for evaluation."
    )
    keyword_prior_strength: float = Field(
        1.0, ge=0, description="Weight of keyword hints in the domain prior (0 = router only)."
    )
    classifier_temperature: float = Field(
        0.05, gt=0, description="Softmax temperature over centroid cosine similarities."
    )
    domains: list[str] = Field(
        default_factory=list, description="Domains the orchestrator improves ([] = all in store)."
    )
    min_new_samples: int = Field(
        50, ge=1, description="New high-quality feedback examples that trigger retraining."
    )
    margin: float = Field(
        0.05, ge=0, description="Relative held-out gain a candidate needs over production."
    )
    metric: str = Field(
        "perplexity", description="Held-out metric that decides (lower-is-better ones known)."
    )
    experiment_share: float = Field(
        0.5, gt=0, lt=1, description="Traffic share of the candidate during its experiment."
    )
    experiment_alpha: float = Field(
        0.05, gt=0, lt=0.5, description="Significance level of the promote/rollback test."
    )
    experiment_min_trials: int = Field(30, ge=1, description="Rated requests per arm first.")
    experiment_max_trials: int = Field(
        1000, ge=1, description="Rated requests per arm after which no gain means rollback."
    )
    experiment_timeout_s: float = Field(
        0.0, ge=0, description="How long one cycle waits for its experiment (0 = next cycle)."
    )
    experiment_max_s: float = Field(
        0.0,
        ge=0,
        description="Time budget of an experiment: older without a significant gain means "
        "rollback (0 = no time limit, only experiment_max_trials).",
    )
    live_ab: bool = Field(
        True,
        description="Run a candidate that passes the offline gate as a live A/B experiment on "
        "the running Serve app before promoting it (false: promote on the gate alone).",
    )
    experiment_url: str | None = Field(
        None,
        description="Base URL of the Serve app the A/B runs on (None = http://serve.host:"
        "serve.port); the loop authenticates with improve.api_key, else serve.admin_key.",
    )
    api_key: str | None = Field(
        None,
        description="Bearer key the improve loop sends to the Serve app's experiments API "
        "(needs the admin role: `qlp keys api create --role admin`); None = serve.admin_key.",
        json_schema_extra={"secret": True},
    )
    method: Literal["sft", "dpo", "auto"] = Field(
        "auto",
        description="Candidate training: sft, dpo (preference pairs from feedback, starting "
        "from the production adapter), auto = dpo when there are >= min_pairs pairs and a "
        "production adapter, else sft.",
    )
    min_pairs: int = Field(16, ge=1, description="Training preference pairs auto needs for DPO.")
    dpo_steps: int = Field(30, ge=1, description="DPO optimizer steps of a candidate.")
    dpo_beta: float = Field(0.1, gt=0, description="DPO beta (strength of the reference KL).")
    dpo_learning_rate: float = Field(5e-3, gt=0, description="DPO learning rate.")
    interval_s: float = Field(600.0, gt=0, description="Seconds between orchestrator cycles.")
    trusted_heldout: bool = Field(
        True,
        description="Also evaluate on the domain's bundled held-out set (a yardstick feedback "
        "cannot move).",
    )
    max_eval_examples: int = Field(64, ge=1, description="Held-out examples scored per model.")
    lease_ttl_s: float = Field(
        120.0,
        gt=0,
        description="A round holds a lease per domain in the store, renewed every third of "
        "this while it runs; another orchestrator takes it over only after it expired.",
    )

    @model_validator(mode="after")
    def _key_not_empty(self) -> ImproveConfig:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError(
                "`improve.api_key` is empty: unset it (the loop then uses serve.admin_key) "
                "or set a key with the admin role"
            )
        if self.api_key is not None and not self.api_key.isascii():
            raise ValueError("`improve.api_key` must be ASCII (it travels in an HTTP header)")
        return self


class ActiveLearningConfig(Section):
    method: Literal[
        "entropy", "margin", "least_confidence", "mc_dropout", "diversity", "random"
    ] = Field("entropy", description="How the label queue ranks unlabelled requests.")
    k: int = Field(10, ge=1, description="Examples per label batch.")
    duplicate_threshold: float | None = Field(
        0.95,
        ge=-1,
        le=1,
        description="Skip picks this cosine-similar to labelled/picked ones (None = keep "
        "near-duplicates).",
    )
    high_quantile: float = Field(0.9, ge=0, le=1, description="Score percentile for 'high'.")
    medium_quantile: float = Field(0.6, ge=0, le=1, description="Score percentile for 'medium'.")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature over router scores.")
    mc_passes: int = Field(20, ge=2, description="Stochastic passes for MC-dropout.")
    mc_dropout: float = Field(0.1, gt=0, lt=1, description="Dropout rate for MC-dropout.")
    pool_limit: int = Field(5000, ge=1, description="Most recent requests considered.")
    weak_area_weighting: bool = Field(
        True, description="Weigh requests of domains with poor feedback up (meta-analysis)."
    )

    @model_validator(mode="after")
    def _quantiles_ordered(self) -> ActiveLearningConfig:
        if self.medium_quantile > self.high_quantile:
            raise ValueError(
                f"`active_learning.medium_quantile` ({self.medium_quantile}) must not exceed "
                f"`active_learning.high_quantile` ({self.high_quantile})."
            )
        return self
