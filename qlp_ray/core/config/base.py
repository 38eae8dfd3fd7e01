"""The base class of every config section: unknown keys are errors, assignments validate."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One section (or sub-section) of ``QLPConfig``.

    Every field carries a default and a one-line ``description``: ``qlp config dump``
    turns them into ``configs/default.yaml`` and its comments.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
