"""The inference-backend protocol: the rest of qlp_ray does not care which engine runs.

Implementations: ``TransformersBackend`` (default, CPU/GPU), OpenVINO (hardware
issue), vLLM (optional GPU extra). A backend serves one base model and any
number of adapters (by adapter id, ``None`` = the bare base model).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # None: no log-probabilities (the default path computes none); n >= 0: each generated
    # token's log-probability and the n most likely alternatives at its step
    logprobs: int | None = None


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "length"  # "stop" | "length"
    extra: dict = field(default_factory=dict)
    # one entry per generated token when the request asked for ``logprobs``, in OpenAI's
    # chat shape: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
    # "bytes"}, ...]}; log-probabilities are the log-softmax of the model's raw logits
    logprobs: list[dict] | None = None


class InferenceBackend(abc.ABC):
    """Generates text from one base model with an optional adapter (or stack) applied."""

    name: str = "abstract"
    batches_across_adapters: bool = False  # generate_batch runs mixed adapters as one batch

    @abc.abstractmethod
    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        """Generate one completion; ``adapter`` is a loaded adapter name or ``None``."""

    def generate_batch(
        self, items: Sequence[tuple[GenerationRequest, str | None]]
    ) -> list[Generation | Exception]:
        """Generate for ``(request, adapter)`` rows; a row's error is returned in its place.

        This default runs the rows one by one; backends that batch across adapters override
        it and set ``batches_across_adapters``.
        """
        results: list[Generation | Exception] = []
        for request, adapter in items:
            try:
                results.append(self.generate(request, adapter))
            except Exception as exc:  # that row's caller raises it
                results.append(exc)
        return results

    @abc.abstractmethod
    def load_adapter(self, name: str, path: str) -> None:
        """Load a (verified) adapter directory under ``name``."""

    @abc.abstractmethod
    def unload_adapter(self, name: str) -> None:
        """Free an adapter; unknown names are ignored."""

    @property
    @abc.abstractmethod
    def loaded_adapters(self) -> list[str]:
        """Names of adapters currently loaded."""


class AdapterNotLoaded(KeyError):
    """``generate`` was asked for an adapter name that is not (or no longer) loaded."""
