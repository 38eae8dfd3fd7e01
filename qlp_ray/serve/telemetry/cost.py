"""Cost per request and per workflow, and savings versus sending everything to an external model.

Prices come from ``configs/prices.yaml`` (USD per million tokens, local and external models;
shipped inside the package, found by ``qlp_ray.core.paths.shipped_config``).
A request served by a local adapter costs the local price; the *reference* model is what the
same tokens would have cost at the external provider, so ``savings = reference - actual``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qlp_ray.core.config import QLPConfig, read_yaml
from qlp_ray.core.errors import ConfigError, InvalidRequest
from qlp_ray.core.paths import shipped_config

logger = logging.getLogger(__name__)

EXTERNAL_LABEL_PREFIX = "external:"

DEFAULT_PRICES_FILE = shipped_config("prices.yaml")


class ModelPrice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "external"] = Field(description="Served by the fleet or by a vendor.")
    input_per_mtok: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per million completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6


class PriceTable(BaseModel):
    """The contents of ``prices.yaml``."""

    model_config = ConfigDict(extra="forbid")

    currency: str = Field("USD", description="Currency of every price.")
    reference_model: str = Field(description="External model that is the savings baseline.")
    local_model: str = Field(description="Price entry of local adapters and the base model.")
    models: dict[str, ModelPrice] = Field(description="Price entries by name.")
    adapters: dict[str, str] = Field(default_factory=dict, description="Adapter -> price entry.")

    @model_validator(mode="after")
    def _names_exist(self) -> PriceTable:
        for option, name in [
            ("reference_model", self.reference_model),
            ("local_model", self.local_model),
            *self.adapters.items(),
        ]:
            if name not in self.models:
                raise ValueError(
                    f"`{option}` names unknown price entry {name!r}; known: {sorted(self.models)}"
                )
        return self

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        p = Path(path) if path is not None else DEFAULT_PRICES_FILE
        try:
            return cls.model_validate(read_yaml(p))
        except ValidationError as exc:
            raise ConfigError(f"invalid price table {p}: {exc}") from exc

    def price_for(self, model: str) -> tuple[str, ModelPrice]:
        """The price entry of ``model``: itself if priced, its override, else the local price."""
        if model in self.models:
            return model, self.models[model]
        name = self.adapters.get(model, self.local_model)
        return name, self.models[name]


@dataclass(frozen=True)
class RequestCost:
    model: str
    price_entry: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    reference_cost_usd: float

    @property
    def savings_usd(self) -> float:
        return self.reference_cost_usd - self.cost_usd


@dataclass
class _Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    reference_cost_usd: float = 0.0

    def add(self, rc: RequestCost) -> None:
        self.requests += 1
        self.prompt_tokens += rc.prompt_tokens
        self.completion_tokens += rc.completion_tokens
        self.cost_usd += rc.cost_usd
        self.reference_cost_usd += rc.reference_cost_usd

    def to_dict(self) -> dict[str, Any]:
        saved = self.reference_cost_usd - self.cost_usd
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "reference_cost_usd": self.reference_cost_usd,
            "savings_usd": saved,
            "savings_ratio": saved / self.reference_cost_usd if self.reference_cost_usd else None,
        }


class CostLedger:
    """Running cost totals overall, per model and per workflow (LRU-bounded)."""

    def __init__(self, prices: PriceTable, max_workflows: int = 10_000) -> None:
        self.prices = prices
        self.max_workflows = max_workflows
        self._reference = prices.models[prices.reference_model]
        self.total = _Totals()
        self.by_model: dict[str, _Totals] = {}
        self._workflows: OrderedDict[str, _Totals] = OrderedDict()

    def price(self, model: str, prompt_tokens: int, completion_tokens: int) -> RequestCost:
        """Cost of one request without recording it."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise InvalidRequest(
                f"token counts must be >= 0, got {prompt_tokens}/{completion_tokens}"
            )
        entry, price = self.prices.price_for(model)
        return RequestCost(
            model,
            entry,
            prompt_tokens,
            completion_tokens,
            price.cost(prompt_tokens, completion_tokens),
            self._reference.cost(prompt_tokens, completion_tokens),
        )

    def record(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        workflow_id: str | None = None,
    ) -> RequestCost:
        """Price one request and add it to the totals (and to its workflow, if any)."""
        rc = self.price(model, prompt_tokens, completion_tokens)
        self.total.add(rc)
        self.by_model.setdefault(model, _Totals()).add(rc)
        if workflow_id is not None:
            wf = self._workflows.pop(workflow_id, None) or _Totals()
            wf.add(rc)
            self._workflows[workflow_id] = wf
            if len(self._workflows) > self.max_workflows:
                self._workflows.popitem(last=False)
        return rc

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        if workflow_id not in self._workflows:
            raise InvalidRequest(f"no cost recorded for workflow {workflow_id!r}")
        return {"workflow_id": workflow_id, **self._workflows[workflow_id].to_dict()}

    def report(self) -> dict[str, Any]:
        return {
            "currency": self.prices.currency,
            "reference_model": self.prices.reference_model,
            "total": self.total.to_dict(),
            "by_model": {m: t.to_dict() for m, t in sorted(self.by_model.items())},
        }


def external_label(model: str) -> str:
    """What ``x-qlp-adapter`` and analytics call a request the external model served."""
    return f"{EXTERNAL_LABEL_PREFIX}{model}"


def price_entry(cfg: QLPConfig) -> str:
    """The ``prices.yaml`` entry the external fallback is priced as."""
    ext = cfg.router.external
    return ext.price_entry or ext.model
