"""HTTP ingress: the OpenAI-compatible API in front of the router and the compositor.

What a request's ``model`` means is decided by :mod:`qlp_ray.serve.model_table`:
``auto`` asks the router for a target (an adapter, a stack, or the fallback: the base
model or, with ``router.fallback: external``, an external OpenAI-compatible endpoint —
:mod:`qlp_ray.serve.external`), an adapter id goes straight to the compositor, the base
model id runs without an adapter. Every response names what served it (``qlp``
body field, ``x-qlp-adapter`` header) and carries ``x-request-id``.
"""

# No `from __future__ import annotations` here: Serve's ingress re-creates the route
# methods, and FastAPI must see real types (not strings) to recognise Request/Response.
import logging
import time
from typing import Any

from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import AuthenticationError, QLPError
from qlp_ray.data.format import chat_to_prompt, routing_text
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.store import Registry
from qlp_ray.serve.admission import AdmissionLimiter, AdmissionMiddleware, deployment_limits
from qlp_ray.serve.experiment_hook import ExperimentOutcomeMiddleware, GatewayExperiments
from qlp_ray.serve.external import external_fallback
from qlp_ray.serve.http.auth import ADMIN_PREFIXES, KEY_MESSAGE, check_api_key, key_matches
from qlp_ray.serve.http.errors import install_error_handlers, qlp_error_response, unwrap
from qlp_ray.serve.http.limits import BodyLimitMiddleware
from qlp_ray.serve.http.protocol import (
    AUTO_MODEL,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    QLPInfo,
    check_limits,
    usage_of,
)
from qlp_ray.serve.http.routes_adapters import router as adapters_router
from qlp_ray.serve.http.routes_compositor import router as admin_compositor_router
from qlp_ray.serve.http.routes_datasets import router as datasets_router
from qlp_ray.serve.http.routes_experiments import router as experiments_router
from qlp_ray.serve.http.routes_improve import router as improve_routes_router
from qlp_ray.serve.http.routes_jobs import router as jobs_router
from qlp_ray.serve.http.routes_routing import router as routing_router
from qlp_ray.serve.http.routes_training import router as training_router
from qlp_ray.serve.local_router import InProcessRouter
from qlp_ray.serve.model_table import ModelTable, Target
from qlp_ray.serve.route_client import CoalescingRouter
from qlp_ray.serve.telemetry.cost import external_label
from qlp_ray.serve.telemetry.recording import RequestRecorder

logger = logging.getLogger(__name__)

ADAPTER_HEADER = "x-qlp-adapter"
BASE_LABEL = "base"

app = FastAPI(title="qlp_ray", description="OpenAI-compatible API over routed LoRA adapters.")
app.include_router(admin_compositor_router)
app.include_router(improve_routes_router)
app.include_router(training_router)  # before jobs: /jobs/{id}/metrics
app.include_router(jobs_router)
app.include_router(datasets_router)
app.include_router(adapters_router)
app.include_router(experiments_router)
app.add_middleware(AdmissionMiddleware)  # first = innermost: auth answers before admission
app.include_router(routing_router)


@app.middleware("http")
async def _api_key_first(request: Request, call_next: Any) -> Any:
    """401 before body validation; the routes check the key again (fail closed)."""
    expected = getattr(request.app.state, "api_key", None)
    path = request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/"))
    if expected and path != "/health" and not key_matches(request, expected):
        admin_key = getattr(request.app.state, "admin_key", None)  # admin routes: admin key
        if not (path.startswith(ADMIN_PREFIXES) and admin_key and key_matches(request, admin_key)):
            return qlp_error_response(AuthenticationError(KEY_MESSAGE))
    return await call_next(request)


install_error_handlers(app)  # added last = outermost: sets request.state.request_id first
app.add_middleware(ExperimentOutcomeMiddleware)  # sees the final status of every request
app.add_middleware(BodyLimitMiddleware)  # outermost: an oversized body is refused unread


@serve.ingress(app)
class Gateway:
    """FastAPI ingress deployment (see module docstring)."""

    def __init__(
        self,
        config: dict[str, Any],
        router: DeploymentHandle | None,
        compositor: DeploymentHandle,
    ) -> None:

        self.cfg = QLPConfig.model_validate(config)
        self.external = external_fallback(self.cfg)  # None unless router.fallback: external
        if router is None:  # router.placement: gateway, same call shape as the handle
            router = InProcessRouter(config)
        elif self.cfg.router.coalesce_calls:  # concurrent routing calls travel together
            router = CoalescingRouter(router, self.cfg.router.max_batch_size)
        self.router = router
        self.compositor = compositor
        self.registry = Registry(self.cfg)
        self.base_model = base_model_id(self.cfg)
        app.state.api_key = self.cfg.serve.api_key
        app.state.max_body_bytes = self.cfg.serve.max_body_bytes
        app.state.admin_key = self.cfg.serve.admin_key
        app.state.gateway = self  # for the included admin routers
        app.state.admission = AdmissionLimiter.from_config(self.cfg.serve)
        self.models = ModelTable(
            self.registry, self.base_model, router,
            max_stack_size=self.cfg.serve.max_stack_size,
            poll_s=self.cfg.router.generation_poll_s,
        )  # fmt: skip

        self.recorder = RequestRecorder(self.cfg, self.base_model)

        self.experiments = GatewayExperiments(self.cfg, self.recorder.store)

    def __del__(self) -> None:
        """Serve calls this when the replica stops: write the queued request rows."""
        recorder = self.__dict__.get("recorder")
        if recorder is not None:
            recorder.close()

    # -- helpers ----------------------------------------------------------------------
    def _check_key(self, request: Request) -> None:
        check_api_key(request, self.cfg.serve.api_key)

    async def _generate(self, target: Target, body: Any, prompt: str) -> dict[str, Any]:
        max_tokens = body.max_tokens or self.cfg.serve.default_max_tokens
        if target.routed and target.adapter is None and self.external is not None:
            target.external = self.external.model
            return await self.external.generate(body, prompt, max_tokens)
        payload = {
            "prompt": prompt,
            "max_new_tokens": max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": body.stop_tuple,
            "seed": body.seed,
        }
        handle = self.compositor
        if target.multiplex_id is not None:
            handle = handle.options(multiplexed_model_id=target.multiplex_id)
        try:
            return await handle.generate.remote(payload)
        except Exception as exc:
            original = unwrap(exc)
            if isinstance(original, QLPError):
                raise original from None
            raise

    def _info(self, target: Target, t0: float, request: Request) -> QLPInfo:
        return QLPInfo(
            adapter=target.adapter,
            version=target.version,
            domain=target.domain,
            confidence=target.confidence,
            routed=target.routed,
            fallback=target.routed and target.adapter is None,
            external=target.external,
            latency_ms=round((time.perf_counter() - t0) * 1000, 2),
            request_id=request.state.request_id,
            experiment=target.experiment,
            variant=target.variant,
        )

    async def _record(
        self, request: Request, target: Target, body: Any, prompt: str, gen: dict, t0: float
    ) -> None:
        await self.recorder.record(
            request_id=request.state.request_id, target=target, prompt=prompt, gen=gen,
            latency_s=time.perf_counter() - t0, user=(body.user or None) and body.user[:128],
        )  # fmt: skip

    def _label(self, target: Target) -> str:
        if target.external is not None:
            return external_label(target.external)
        return target.adapter or BASE_LABEL

    def _checked(self, body: Any, text: str, request: Request) -> None:
        self._check_key(request)
        s = self.cfg.serve
        check_limits(
            text, body.max_tokens, max_prompt_chars=s.max_prompt_chars,
            max_tokens_limit=s.max_tokens_limit,
        )  # fmt: skip

    # -- routes -----------------------------------------------------------------------
    @app.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "base_model": self.base_model}

    @app.get("/v1/models")
    async def models(self, request: Request) -> ModelList:
        self._check_key(request)
        try:
            await self.router.refresh.remote()
        except Exception as exc:
            raise unwrap(exc) from None
        cards = [
            ModelCard(id=AUTO_MODEL, kind="router"),
            ModelCard(id=self.base_model, kind="base"),
        ]
        adapters = await self.models.adapters(fresh=True)
        for rec in sorted(adapters.values(), key=lambda r: r.adapter_id):
            cards.append(
                ModelCard(id=rec.adapter_id, domain=rec.domain, version=int(rec.version),
                          signed=bool(rec.signed))
            )  # fmt: skip
        return ModelList(data=cards)

    @app.post("/v1/completions")
    async def completions(
        self, body: CompletionRequest, request: Request, response: Response
    ) -> CompletionResponse:

        t0 = time.perf_counter()
        prompt = str(body.prompt)
        self._checked(body, prompt, request)
        target = await self.models.resolve(body.model, routing_text(prompt))
        target = await self.experiments.apply(self, request, body, target)
        gen = await self._generate(target, body, prompt)
        await self._record(request, target, body, prompt, gen, t0)
        response.headers[ADAPTER_HEADER] = self._label(target)
        return CompletionResponse(
            model=target.external or target.adapter or self.base_model,
            choices=[CompletionChoice(text=gen["text"], finish_reason=gen["finish_reason"])],
            usage=usage_of(gen),
            qlp=self._info(target, t0, request),
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(
        self, body: ChatCompletionRequest, request: Request, response: Response
    ) -> ChatCompletionResponse:

        t0 = time.perf_counter()
        prompt = chat_to_prompt(body.messages)
        self._checked(body, prompt, request)
        target = await self.models.resolve(body.model, routing_text(body.messages))
        target = await self.experiments.apply(self, request, body, target)
        gen = await self._generate(target, body, prompt)
        await self._record(request, target, body, prompt, gen, t0)
        response.headers[ADAPTER_HEADER] = self._label(target)
        return ChatCompletionResponse(
            model=target.external or target.adapter or self.base_model,
            choices=[
                ChatChoice(
                    message=ChatMessage(role="assistant", content=gen["text"]),
                    finish_reason=gen["finish_reason"],
                )
            ],
            usage=usage_of(gen),
            qlp=self._info(target, t0, request),
        )


def gateway_deployment(cfg: QLPConfig) -> Any:
    """The Serve deployment object of the HTTP ingress, sized for ``cfg``."""
    return serve.deployment(
        name="Gateway",
        ray_actor_options={"num_cpus": cfg.serve.gateway_num_cpus},
        **deployment_limits(cfg.serve, "gateway"),
    )(Gateway)
