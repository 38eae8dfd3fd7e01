"""Sections read by ``qlp_ray.core`` itself: where qlp_ray writes (``paths``), the Ray
Jobs API long operations are submitted to (``jobs``) and the local Ray cluster qlp starts
when there is none (``cluster``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from qlp_ray.core.config.base import Section

NODE_HOME_ENV = "QLP_HOME"


class PathsConfig(Section):
    home: Path = Field(
        default=Path("~/.cache/qlp_ray"),
        description="Root of everything qlp_ray writes: models, registry, keys, runs "
        "(env QLP_HOME).",
    )
    node_home: bool = Field(
        False,
        description="Each node keeps its own home: a process whose environment sets QLP_HOME "
        "(a node's Ray processes inherit it) uses that, even in a config another node sent "
        "(Serve replicas, Ray Train workers, job drivers). Shared state must then come from "
        "registry.uri, store.url / QLP_DB_URL and train.storage_uri.",
    )

    @model_validator(mode="before")
    @classmethod
    def _home_of_this_node(cls, data: Any) -> Any:
        """With ``node_home``, this process's ``QLP_HOME`` wins over the ``home`` it got."""
        on = isinstance(data, dict) and str(data.get("node_home")).lower() in ("true", "1")
        if on and os.environ.get(NODE_HOME_ENV):
            return {**data, "home": os.environ[NODE_HOME_ENV]}
        return data

    @property
    def root(self) -> Path:
        """``home`` with ``~`` expanded, made absolute."""
        return self.home.expanduser().resolve()

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def runs(self) -> Path:
        return self.root / "runs"


class JobsConfig(Section):
    dashboard_address: str = Field(
        "",
        description="Ray dashboard URL of the Jobs API the gateway submits to "
        "(empty: RAY_DASHBOARD_ADDRESS / an http RAY_ADDRESS / http://127.0.0.1:8265).",
    )
    max_steps: int = Field(100_000, ge=1, description="Largest n_steps a fine-tuning job takes.")
    data_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories whose .jsonl files a REST job may name (training_file, "
        "validation_file); [] = <home>/data and the bundled samples. Paths are resolved "
        "(.., symlinks) before the check.",
    )


class ClusterConfig(Section):
    token_auth: bool = Field(
        True,
        description="A Ray cluster qlp starts requires Ray's token auth (RAY_AUTH_MODE=token; "
        "the token is ~/.ray/auth_token, created if missing). Off: anyone who reaches its "
        "ports can run code.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs a cluster qlp starts offers Ray (null: all of them)."
    )
    dashboard_port: int = Field(
        8265, ge=1, le=65535, description="Dashboard and Jobs API port of a cluster qlp starts."
    )
