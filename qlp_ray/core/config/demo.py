"""``demo``: the skill domains of the bundled samples and the ``qlp demo`` run over them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qlp_ray.core.config.base import Section

DOMAINS = ("dataeng", "devops", "api", "frontend", "ml")


class DemoConfig(Section):
    domains: list[str] = Field(
        default_factory=lambda: list(DOMAINS), description="Domains the demo trains and serves."
    )
    steps: int = Field(60, ge=1, description="Training steps per demo adapter.")
    method: Literal["lora", "adalora"] = Field("lora", description="PEFT method of the demo.")
    max_tokens: int = Field(16, ge=1, description="Tokens generated per demo request.")
