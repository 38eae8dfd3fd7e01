"""Python client of the qlp HTTP API (OpenAI-compatible), with typed errors.

>>> from qlp_ray.client import Client
>>> c = Client("http://127.0.0.1:8000")
>>> c.complete("Write a SQL join", max_tokens=16).qlp.adapter
'dataeng'
"""

from __future__ import annotations

from typing import Any

import httpx

from qlp_ray.core.errors import (
    AdapterLoadError,
    AdapterNotFound,
    AuthenticationError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PermissionDenied,
    QLPError,
    SignatureError,
)
from qlp_ray.core.jobs import JobsClient
from qlp_ray.serve.http.protocol import (
    AUTO_MODEL,
    ChatCompletionResponse,
    CompletionResponse,
    ModelList,
)

__all__ = ["Client"]


def error_from_response(response: httpx.Response) -> QLPError:
    """The typed qlp_ray error for an HTTP error response (OpenAI error body)."""
    status = response.status_code
    try:
        err = response.json()["error"]
        message, code, param = str(err["message"]), err.get("code"), err.get("param")
    except (ValueError, KeyError, TypeError):
        message, code, param = f"HTTP {status}: {response.text[:200]}", None, None
    if status == 400:
        cls: type[QLPError] = InvalidRequest
    elif status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDenied
    elif status == 404:
        cls = AdapterNotFound if code in (None, AdapterNotFound.code) else NotFound
    elif status == 424:
        cls = AdapterLoadError if code == AdapterLoadError.code else SignatureError
    elif status == 503:
        cls = Overloaded
    else:
        cls = QLPError
    return cls(message, param=param)


class Client:
    """Talks to a running qlp app; every method raises a typed ``QLPError`` on 4xx/5xx."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        ray_address: str | None = None,
    ) -> None:
        self._ray_address = ray_address  # Ray dashboard (Jobs API); default from RAY_ADDRESS
        self._jobs: Any = None
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise QLPError(f"cannot reach {self._http.base_url}{path}: {exc}") from exc
        if response.is_error:
            raise error_from_response(response)
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def models(self) -> ModelList:
        return ModelList.model_validate(self._request("GET", "/v1/models"))

    def complete(self, prompt: str, model: str = AUTO_MODEL, **kw: Any) -> CompletionResponse:
        """``POST /v1/completions``; ``kw``: max_tokens, temperature, top_p, stop, seed, user."""
        body = {"model": model, "prompt": prompt, **kw}
        return CompletionResponse.model_validate(self._request("POST", "/v1/completions", body))

    def chat(
        self, messages: list[dict[str, str]], model: str = AUTO_MODEL, **kw: Any
    ) -> ChatCompletionResponse:
        """``POST /v1/chat/completions`` with ``[{"role", "content"}, ...]``."""
        body = {"model": model, "messages": messages, **kw}
        data = self._request("POST", "/v1/chat/completions", body)
        return ChatCompletionResponse.model_validate(data)

    # -- training data, fine-tuning jobs and the registry over HTTP (admin key) --------
    def validate_dataset(
        self, rows: list[dict[str, Any]], method: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/datasets/validate``: each row's flags (invalid, duplicate, too_short,
        pii), in ``method``'s data shape when given (default: capsules)."""
        body: dict[str, Any] = {"rows": rows}
        if method is not None:
            body["method"] = method
        return self._request("POST", "/v1/datasets/validate", body)

    def upload_file(
        self, rows: list[dict[str, Any]], filename: str = "dataset.jsonl", method: str | None = None
    ) -> dict:
        """``POST /v1/files``: store rows (capsules, or ``method``'s data shape); ``["path"]``
        is a ``training_file``."""
        body: dict[str, Any] = {"purpose": "fine-tune", "filename": filename, "rows": rows}
        if method is not None:
            body["method"] = method
        return self._request("POST", "/v1/files", body)

    def fine_tuning_methods(self) -> dict[str, Any]:
        """``GET /v1/fine-tuning/methods``: every method, its data shape and needed options."""
        return self._request("GET", "/v1/fine-tuning/methods")

    def estimate_fine_tuning(self, training_file: str, **hyperparameters: Any) -> dict[str, Any]:
        """``POST /v1/fine-tuning/estimate``: steps, tokens, seconds, cost of a planned run."""
        body = {"training_file": training_file, "hyperparameters": hyperparameters}
        return self._request("POST", "/v1/fine-tuning/estimate", body)

    def create_fine_tuning_job(
        self,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        *,
        options: dict[str, str] | None = None,
        **hp: Any,
    ) -> dict[str, Any]:
        """``POST /v1/fine-tuning/jobs``; ``options``: the training ``method`` (sft, dpo, ppo,
        grpo, rloo, reward, distill, ...), ``reward``, ``teacher``, ``parent``; ``hp``:
        n_steps | n_epochs, method (PEFT), batch_size, learning_rate, lora_rank, lora_alpha,
        lora_dropout; the method's own (``GET /v1/fine-tuning/methods``: ppo's kl_coef,
        kl_target, clip_range, ppo_epochs)."""
        body: dict[str, Any] = {"model": model, "training_file": training_file,
                                "hyperparameters": hp, **(options or {})}  # fmt: skip
        if validation_file is not None:
            body["validation_file"] = validation_file
        return self._request("POST", "/v1/fine-tuning/jobs", body)

    def fine_tuning_jobs(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/fine-tuning/jobs")["data"]

    def fine_tuning_job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/fine-tuning/jobs/{job_id}")

    def fine_tuning_metrics(self, job_id: str) -> dict[str, Any]:
        """Reported metrics so far: ``series`` (train/heldout loss), ``progress``, ``adapter``."""
        return self._request("GET", f"/v1/fine-tuning/jobs/{job_id}/metrics")

    def cancel_fine_tuning_job(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/fine-tuning/jobs/{job_id}")

    def admin(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        """Any admin route, e.g. ``admin("GET", "adapters")``, ``admin("GET", "analytics")``,
        ``admin("POST", "adapters/api/promote", {"version": 2})``, ``admin("GET",
        "experiments")``, ``admin("GET", "routes")``, ``admin("GET", "cache")``."""
        return self._request(method, f"/v1/admin/{path.lstrip('/')}", json)

    # -- long operations as Ray jobs (Ray Jobs API on the dashboard, not this HTTP app) --
    def _jobs_client(self) -> Any:
        if self._jobs is None:
            self._jobs = JobsClient(self._ray_address)
        return self._jobs

    def submit_job(
        self, command: list[str], *, job_id: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        """Run ``qlp <command>`` (e.g. ``["train", "--domain", "api", ...]``) as a Ray job."""
        return self._jobs_client().submit_job(command, job_id=job_id, env=env)

    def job_status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED (``NotFound`` for an unknown id)."""
        return self._jobs_client().job_status(job_id)

    def job_logs(self, job_id: str) -> str:
        return self._jobs_client().job_logs(job_id)

    def cancel_job(self, job_id: str) -> bool:
        """Stop the job; False if it had already finished."""
        return self._jobs_client().cancel_job(job_id)
