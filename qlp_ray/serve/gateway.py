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
import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from qlp_ray.core.config import QLPConfig, resolve_config
from qlp_ray.core.errors import AuthenticationError, QLPError
from qlp_ray.data.format import chat_to_prompt, routing_text
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.store import Registry
from qlp_ray.serve.admission import AdmissionLimiter, AdmissionMiddleware, deployment_limits
from qlp_ray.serve.experiment_hook import ExperimentOutcomeMiddleware, GatewayExperiments
from qlp_ray.serve.external import external_fallback
from qlp_ray.serve.http.auth import caller_of, check_api_key
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
    ErrorResponse,
    ModelCard,
    ModelList,
    QLPInfo,
    chat_logprobs,
    check_limits,
    check_logprobs,
    completion_logprobs,
    usage_of,
    with_config_limits,
)
from qlp_ray.serve.http.routes_adapters import router as adapters_router
from qlp_ray.serve.http.routes_compositor import router as admin_compositor_router
from qlp_ray.serve.http.routes_console import router as console_router
from qlp_ray.serve.http.routes_datasets import router as datasets_router
from qlp_ray.serve.http.routes_experiments import router as experiments_router
from qlp_ray.serve.http.routes_improve import router as improve_routes_router
from qlp_ray.serve.http.routes_jobs import router as jobs_router
from qlp_ray.serve.http.routes_routing import router as routing_router
from qlp_ray.serve.http.routes_training import router as training_router
from qlp_ray.serve.http.sse import MEDIA_TYPE, ChunkFormat
from qlp_ray.serve.local_router import InProcessRouter
from qlp_ray.serve.model_table import ModelTable, Target
from qlp_ray.serve.route_client import CoalescingRouter
from qlp_ray.serve.streaming import Event, sse_stream
from qlp_ray.serve.telemetry.cost import external_label
from qlp_ray.serve.telemetry.recording import RequestRecorder

logger = logging.getLogger(__name__)

ADAPTER_HEADER = "x-qlp-adapter"
RECORDED_HEADER = "x-qlp-recorded"  # the request row: committed, queued (background), failed
BASE_LABEL = "base"

# /openapi.json and /docs are Gateway routes: the schema carries this deployment's limits
app = FastAPI(
    title="qlp_ray",
    description="OpenAI-compatible API over routed LoRA adapters.",
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events: OpenAI chunks, "
        "then `data: [DONE]`.",
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
    },
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
}
app.include_router(admin_compositor_router)
app.include_router(improve_routes_router)
app.include_router(console_router)
app.include_router(training_router)  # before jobs: /jobs/{id}/metrics
app.include_router(jobs_router)
app.include_router(datasets_router)
app.include_router(adapters_router)
app.include_router(experiments_router)
app.add_middleware(AdmissionMiddleware)  # first = innermost: auth answers before admission
app.include_router(routing_router)


@app.middleware("http")
async def _api_key_first(request: Request, call_next: Any) -> Any:
    """401 before body validation; the routes check the key (and its role) again."""
    path = request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/"))
    if path != "/health" and getattr(request.app.state, "gateway", None) is not None:
        try:
            caller_of(request)
        except AuthenticationError as exc:
            return qlp_error_response(exc)
    return await call_next(request)


install_error_handlers(app)  # added last = outermost: sets request.state.request_id first
app.add_middleware(ExperimentOutcomeMiddleware)  # sees the final status of every request
app.add_middleware(BodyLimitMiddleware)  # outermost: an oversized body is refused unread


# Module functions the class calls are defined above it: defined below, the replica's
# constructor raised NameError (Serve's ingress wraps the class where it is decorated).
async def _one_event(generation: Any) -> AsyncIterator[Event]:
    """A whole generation (an awaitable of its dict) as a stream of one final event."""
    gen = await generation
    yield {
        "text": gen["text"],
        "finish_reason": gen["finish_reason"],
        "prompt_tokens": gen["prompt_tokens"],
        "completion_tokens": gen["completion_tokens"],
    }


async def _all_or_none(calls: list[Any]) -> list[dict[str, Any]]:
    """Every call's result; on the first error the others are cancelled and it is raised."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _combined(gens: list[dict[str, Any]], texts: list[str] | None = None) -> dict[str, Any]:
    """What the request log records of a request's choices: the first choice's text, the
    prompt once, every choice's completion tokens."""
    return {
        "text": texts[0] if texts is not None else gens[0]["text"],
        "prompt_tokens": gens[0]["prompt_tokens"],
        "completion_tokens": sum(int(g["completion_tokens"]) for g in gens),
    }


@serve.ingress(app)
class Gateway:
    """FastAPI ingress deployment (see module docstring)."""

    def __init__(
        self,
        config: dict[str, Any],
        router: DeploymentHandle | None,
        compositor: DeploymentHandle,
    ) -> None:

        self.cfg = resolve_config(config)  # secrets from this node (core/config/secrets.py)
        self.external = external_fallback(self.cfg)  # None unless router.fallback: external
        if router is None:  # router.placement: gateway, same call shape as the handle
            router = InProcessRouter(config)
        elif self.cfg.router.coalesce_calls:  # concurrent routing calls travel together
            router = CoalescingRouter(router, self.cfg.router.max_batch_size)
        self.router = router
        self.compositor = compositor
        self.registry = Registry(self.cfg)
        self.base_model = base_model_id(self.cfg)
        app.state.max_body_bytes = self.cfg.serve.max_body_bytes
        app.state.gateway = self  # for the included admin routers
        app.state.keyring = None  # built from this config on first use (http/auth.py)
        if self.cfg.serve.insecure_open_admin:
            logger.warning(
                "serve.insecure_open_admin is ON: admin, training and review routes need no "
                "key on %s (development only)",
                self.cfg.serve.host,
            )
        app.state.admission = AdmissionLimiter.from_config(self.cfg.serve)
        self._openapi: dict[str, Any] | None = None
        self.models = ModelTable(
            self.registry, self.base_model, router,
            max_stack_size=self.cfg.serve.max_stack_size,
            poll_s=self.cfg.router.generation_poll_s,
        )  # fmt: skip

        self.recorder = RequestRecorder(self.cfg, self.base_model)

        self.experiments = GatewayExperiments(
            self.cfg, self.recorder.store, log_failure=self.recorder.record_failure
        )

    def __del__(self) -> None:
        """Serve calls this when the replica stops: write the queued request rows."""
        recorder = self.__dict__.get("recorder")
        if recorder is not None:
            recorder.close()

    # -- helpers ----------------------------------------------------------------------
    def _check_key(self, request: Request) -> None:
        check_api_key(request)

    def _payload(self, body: Any, prompt: str, choice: int) -> dict[str, Any]:
        """The compositor's request for choice ``choice`` (choice i samples with seed + i)."""
        asked, _ = body.token_budget
        payload: dict[str, Any] = {
            "prompt": prompt,
            "max_new_tokens": asked or self.cfg.serve.default_max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": body.stop_tuple,
            "seed": None if body.seed is None else body.seed + choice,
        }
        if isinstance(body, ChatCompletionRequest):  # rendered with the chat template, if any
            payload["messages"] = body.chat_turns
        if body.logprob_count is not None:  # only then does the backend compute them
            payload["logprobs"] = body.logprob_count
        return payload

    def _uses_external(self, target: Target) -> bool:
        return target.routed and target.adapter is None and self.external is not None

    def _handle(self, target: Target) -> Any:
        handle = self.compositor
        if target.multiplex_id is not None:
            handle = handle.options(multiplexed_model_id=target.multiplex_id)
        return handle

    async def _generate(self, target: Target, body: Any, prompt: str, choice: int) -> dict:
        payload = self._payload(body, prompt, choice)
        if self._uses_external(target):
            assert self.external is not None
            target.external = self.external.model
            return await self.external.generate(body, prompt, payload["max_new_tokens"])
        try:
            return await self._handle(target).generate.remote(payload)
        except Exception as exc:
            original = unwrap(exc)
            if isinstance(original, QLPError):
                raise original from None
            raise

    def _choice_stream(
        self, target: Target, body: Any, prompt: str, choice: int
    ) -> tuple[AsyncIterator[Event], Callable[[], None]]:
        """Choice ``choice`` as a stream of events and how to cancel it. The external
        fallback answers with whole texts: its stream is that one final event."""
        if self._uses_external(target):
            return _one_event(self._generate(target, body, prompt, choice)), lambda: None
        payload = self._payload(body, prompt, choice)
        gen = self._handle(target).options(stream=True).generate_stream.remote(payload)
        return gen, gen.cancel

    async def _stream(
        self, kind: str, target: Target, body: Any, prompt: str, request: Request, t0: float
    ) -> StreamingResponse:
        """``stream: true``: read every choice's first event (errors so far are JSON
        4xx), then answer with server-sent events (serve/streaming.py)."""
        opened = [self._choice_stream(target, body, prompt, i) for i in range(body.n)]
        streams = [stream for stream, _ in opened]

        def close() -> None:
            for _, cancel in opened:
                cancel()

        try:
            firsts = [await anext(stream) for stream in streams]
        except BaseException as exc:
            close()
            original = unwrap(exc)
            if isinstance(original, StopAsyncIteration):
                raise RuntimeError("a generation stream ended before its first event") from None
            if isinstance(original, QLPError):
                raise original from None
            raise

        async def on_done(finals: list[Event], texts: list[str]) -> None:
            await self._record(request, target, body, prompt, _combined(finals, texts), t0)

        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        fmt = ChunkFormat(
            kind="chat" if kind == "chat" else "completion",
            id=f"{prefix}-{uuid.uuid4().hex[:24]}",
            model=target.external or target.adapter or self.base_model,
            created=int(time.time()),
            include_usage=body.include_usage,
        )
        events = sse_stream(
            fmt, streams, firsts,
            info=lambda: self._info(target, t0, request).model_dump(),
            on_done=on_done, close=close, request_id=request.state.request_id,
        )  # fmt: skip
        headers = {ADAPTER_HEADER: self._label(target), "cache-control": "no-cache"}
        return StreamingResponse(events, media_type=MEDIA_TYPE, headers=headers)

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
    ) -> str:
        return await self.recorder.record(
            request_id=request.state.request_id, target=target, prompt=prompt, gen=gen,
            latency_s=time.perf_counter() - t0, user=(body.user or None) and body.user[:128],
            caller=caller_of(request).key_id,
        )  # fmt: skip

    def _label(self, target: Target) -> str:
        if target.external is not None:
            return external_label(target.external)
        return target.adapter or BASE_LABEL

    def _checked(self, body: Any, text: str, request: Request) -> None:
        self._check_key(request)
        s = self.cfg.serve
        asked, param = body.token_budget
        check_limits(
            text, asked, max_prompt_chars=s.max_prompt_chars,
            max_tokens_limit=s.max_tokens_limit, param=param,
        )  # fmt: skip
        check_logprobs(body, s.backend)  # stream, backend: refused before routing

    async def _serve(
        self, kind: str, body: Any, prompt: str, routing: str, request: Request, response: Any
    ) -> Any:
        """One completion or chat request: its target, then its ``n`` choices, streamed or
        in one response."""
        t0 = time.perf_counter()
        self._checked(body, prompt, request)
        target = await self.models.resolve(body.model, routing)
        target = await self.experiments.apply(self, request, body, target)
        if self._uses_external(target):  # the routed fallback: an endpoint without logprobs
            check_logprobs(body, self.cfg.serve.backend, external=True)
        if body.stream:
            return await self._stream(kind, target, body, prompt, request, t0)
        gens = await _all_or_none([self._generate(target, body, prompt, i) for i in range(body.n)])
        recorded = await self._record(request, target, body, prompt, _combined(gens), t0)
        response.headers[ADAPTER_HEADER] = self._label(target)
        response.headers[RECORDED_HEADER] = recorded  # committed | queued | failed
        model = target.external or target.adapter or self.base_model
        info = self._info(target, t0, request)
        if kind == "chat":
            return ChatCompletionResponse(
                model=model,
                choices=[
                    ChatChoice(
                        index=i,
                        message=ChatMessage(role="assistant", content=gen["text"]),
                        finish_reason=gen["finish_reason"],
                        logprobs=chat_logprobs(gen.get("logprobs")),
                    )
                    for i, gen in enumerate(gens)
                ],
                usage=usage_of(gens),
                qlp=info,
            )
        return CompletionResponse(
            model=model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=gen["text"],
                    finish_reason=gen["finish_reason"],
                    logprobs=completion_logprobs(gen.get("logprobs")),
                )  # fmt: skip
                for i, gen in enumerate(gens)
            ],
            usage=usage_of(gens),
            qlp=info,
        )

    # -- routes -----------------------------------------------------------------------
    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        """The OpenAPI schema, with ``serve.max_tokens_limit`` / ``serve.max_prompt_chars``
        written into the request schemas, as the routes enforce them."""
        if self._openapi is None:
            served = request.app  # Serve's frozen copy of `app`: its routes are the served ones
            self._openapi = with_config_limits(
                get_openapi(title=served.title, version=served.version,
                            description=served.description, routes=served.routes),
                max_tokens_limit=self.cfg.serve.max_tokens_limit,
                max_prompt_chars=self.cfg.serve.max_prompt_chars,
            )  # fmt: skip
        return JSONResponse(self._openapi)

    @app.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title="qlp_ray API")

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

    @app.get("/v1/models/{model_id:path}", responses={404: {"model": ErrorResponse}})
    async def model(self, model_id: str, request: Request) -> ModelCard:
        """One model of ``GET /v1/models`` (or a pinned ``adapter@version``); 404 if none."""
        self._check_key(request)
        if model_id == AUTO_MODEL:
            return ModelCard(id=AUTO_MODEL, kind="router")
        if model_id == self.base_model:
            return ModelCard(id=self.base_model, kind="base")
        rec = await self.models.record_of(model_id)
        return ModelCard(id=model_id, domain=rec.domain, version=int(rec.version),
                         signed=bool(rec.signed))  # fmt: skip

    @app.post("/v1/completions", response_model=CompletionResponse, responses=_STREAM_RESPONSES)
    async def completions(
        self, body: CompletionRequest, request: Request, response: Response
    ):  # a model, or a StreamingResponse
        prompt = str(body.prompt)
        return await self._serve(
            "completion", body, prompt, routing_text(prompt), request, response
        )

    @app.post(
        "/v1/chat/completions", response_model=ChatCompletionResponse,
        responses=_STREAM_RESPONSES,
    )  # fmt: skip
    async def chat_completions(
        self, body: ChatCompletionRequest, request: Request, response: Response
    ):  # a model, or a StreamingResponse
        prompt = chat_to_prompt(body.messages)
        return await self._serve(
            "chat", body, prompt, routing_text(body.messages), request, response
        )


def gateway_deployment(cfg: QLPConfig) -> Any:
    """The Serve deployment object of the HTTP ingress, sized for ``cfg``."""
    return serve.deployment(
        name="Gateway",
        ray_actor_options={"num_cpus": cfg.serve.gateway_num_cpus},
        **deployment_limits(cfg.serve, "gateway"),
    )(Gateway)
