"""``serve``: the Ray Serve application and its HTTP API (read by ``qlp_ray.serve``), and
``experiments``: A/B traffic splits it applies (read by ``qlp_ray.experiments``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from qlp_ray.core.config.base import Section

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    app_name: str = Field("qlp", description="Ray Serve application name.")
    route_prefix: str = Field("/", description="HTTP route prefix of the application.")
    max_adapters_per_replica: int = Field(8, ge=1, description="LRU size of loaded adapters.")
    max_prompt_chars: int = Field(8000, ge=1, description="Longer prompts get a 400.")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest HTTP request body; larger ones get a 413 unread."
    )
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens a request may ask.")
    default_max_tokens: int = Field(32, ge=1, description="max_tokens when a request omits it.")
    api_key: str | None = Field(
        None,
        description="Bearer key for every route but /health.",
        json_schema_extra={"secret": True},
    )
    admin_key: str | None = Field(
        None, description="Bearer key for /v1/admin routes.", json_schema_extra={"secret": True}
    )
    insecure_open_admin: bool = Field(
        False,
        description="DEVELOPMENT ONLY: admin, training and review routes need no role key "
        "(refused unless serve.host is a loopback address; logged as a warning at start). "
        "Otherwise they are closed until a key with the role exists (`qlp keys api create`).",
    )
    feedback_per_minute: int = Field(
        600, ge=1, description="Feedback posts one API key (or client address) may make a minute."
    )
    compositor_replicas: int = Field(1, ge=1, description="Replicas of the compositor.")
    compositor_max_replicas_per_node: int | None = Field(
        None, ge=1, description="Spread compositor replicas: at most this many on one node."
    )
    swap_board: Literal["ray", "files"] = Field(
        "ray",
        description="With compositor_replicas > 1, how a hot-swap reaches every replica: a "
        "named Ray actor (any node) or files under <home>/serve/swaps (one node's replicas).",
    )
    swap_poll_s: float = Field(
        0.05,
        gt=0,
        description="With compositor_replicas > 1: how often each compositor replica polls "
        "the swap board for admin work (hot-swap warm-up and invalidation, prefetch).",
    )
    swap_warm_timeout_s: float = Field(
        30.0,
        gt=0,
        description="With compositor_replicas > 1: longest a hot-swap waits for every "
        "replica to acknowledge its warm-up (it then switches anyway, logging which did not).",
    )
    compositor_num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per compositor.")
    router_num_cpus: float = Field(0.5, ge=0, description="CPUs reserved by the router.")
    gateway_num_cpus: float = Field(0.0, ge=0, description="CPUs reserved by the HTTP gateway.")
    compositor_num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs per compositor replica (the scheduler sets 1 for vLLM on a "
        "cluster with GPUs when place_devices is on).",
    )
    compositor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per compositor replica, e.g. {qlp_npu: 1} (the "
        "scheduler sets them when place_devices is on).",
    )
    gateway_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources of each gateway replica (the HTTP ingress), e.g. a "
        "label resource of the nodes that should serve HTTP.",
    )
    router_num_gpus: float = Field(0.0, ge=0, description="GPUs of the router replica.")
    router_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources of the router replica, e.g. {qlp_npu: 1}.",
    )
    place_devices: bool = Field(
        True,
        description="The scheduler picks the compositor's and the router's device from "
        "`hardware.capabilities` and what the cluster advertises (GPU, qlp_npu, qlp_arc...), "
        "and sets the Ray resources and OpenVINO device above; false = as configured.",
    )
    keep_training_slot: bool = Field(
        True,
        description="On a small cluster the scheduler shrinks the CPUs the replicas above "
        "reserve so one training worker (`train.cpus_per_worker`) still fits; the replicas "
        "keep using every core (see `qlp devices`).",
    )
    gateway_admission_limit: int = Field(
        64,
        ge=0,
        description="Completion/chat requests one gateway replica runs at once; more get a 429 "
        "with Retry-After (0 = no limit).",
    )
    gateway_max_ongoing_requests: int = Field(
        100,
        ge=1,
        description="Serve max_ongoing_requests of each gateway replica (>= "
        "gateway_admission_limit).",
    )
    gateway_max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="Serve max_queued_requests in front of the gateway (full: the proxy answers "
        "503 with Retry-After, plain text); -1 = unbounded.",
    )
    router_max_ongoing_requests: int = Field(
        64,
        ge=1,
        description="Serve max_ongoing_requests of each router replica (2 x router.max_batch_size "
        "lets the next batch queue up while one is embedded).",
    )
    router_max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="Requests a caller queues for the router (full: 503); -1 = unbounded.",
    )
    compositor_max_ongoing_requests: int = Field(
        16, ge=1, description="Serve max_ongoing_requests of each compositor replica."
    )
    compositor_max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="Requests a caller queues for the compositor (full: 503); -1 = unbounded.",
    )
    max_batch_size: int = Field(
        16,
        ge=1,
        description="Most compositor requests generated as one batch, across adapters "
        "(requests arriving during a batch form the next one); 1 = one request at a time.",
    )
    ray_throughput_optimized: bool = Field(
        True,
        description="Ray clusters qlp starts run Ray Serve's throughput mode "
        "(RAY_SERVE_THROUGHPUT_OPTIMIZED=1: user code on each replica's main event loop, gRPC "
        "between deployments, buffered request logs); a cluster qlp connects to keeps its own.",
    )
    continuous_batching: bool = Field(
        True,
        description="Greedy rows join the running compositor batch at the next decoding step "
        "and leave it when done (transformers backend); false = request-level batches.",
    )
    lean_forward: bool = Field(
        True,
        description="Continuous batching runs plain Llama models through the lean forward "
        "(models/lean_llama.py, same logits to float rounding); false = transformers' forward.",
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="Retry-After seconds sent with 429/503 overload answers."
    )
    health_timeout_s: float = Field(
        300.0, gt=0, description="How long `qlp serve` waits for the app to become healthy."
    )
    shutdown_poll_s: float = Field(
        0.5,
        gt=0,
        description="How often a stopping replica checks for requests still in flight before "
        "it exits (it waits for them up to 20 s). Ray Serve's 2 s default makes every "
        "redeploy and `qlp shutdown` wait at least that long.",
    )
    backend: Literal["transformers", "openvino", "vllm"] = Field(
        "transformers",
        description="Inference backend of the compositor (openvino: IR on serve.openvino_device; "
        "vllm: vLLM's async engine, its CPU build or CUDA).",
    )
    openvino_device: str = Field("CPU", description="OpenVINO device when backend is openvino.")
    openvino_weight_format: Literal["fp32", "int8", "int4"] = Field(
        "fp32", description="OpenVINO weight compression (NNCF) when backend is openvino."
    )
    openvino_lora: Literal["runtime", "merged"] = Field(
        "runtime",
        description="How the openvino backend runs LoRA adapters: runtime = openvino-genai "
        "runtime adapters on the one base pipeline (no export per adapter); merged = each "
        "adapter merged into the base and exported to its own IR (DoRA, modules_to_save "
        "and other adapters runtime LoRA cannot run always go this way).",
    )
    composition_type: Literal["linear", "cat", "svd", "ties"] = Field(
        "linear", description="PEFT add_weighted_adapter combination type for adapter stacks."
    )
    composition_fallback: Literal["cat", "svd"] | None = Field(
        "cat", description="Used when linear/ties meet unequal ranks; null = answer 400."
    )
    composition_density: float = Field(
        0.5, gt=0, le=1, description="Share of weights kept by the 'ties' combination."
    )
    max_stack_size: int = Field(4, ge=1, description="Most adapters one stack may name.")
    composition_cache_size: int = Field(16, ge=1, description="LRU size of composed stacks.")
    composition_cache_ttl_s: float = Field(
        600.0, gt=0, description="Seconds a composed stack stays cached after composition."
    )
    prewarm_stacks: list[str] = Field(
        default_factory=list, description="Stacks (e.g. 'a+b') composed when a compositor starts."
    )
    vllm_max_loras: int = Field(8, ge=1, description="vLLM: LoRAs in one batch (max_loras).")
    vllm_max_lora_rank: int = Field(16, ge=1, description="vLLM: largest LoRA rank accepted.")
    vllm_gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vLLM: share of GPU memory the engine may use."
    )

    @model_validator(mode="after")
    def _keys_not_empty(self) -> ServeConfig:
        for name in ("api_key", "admin_key"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(
                    f"`serve.{name}` is empty, which would turn its check off: unset it "
                    "(no key) or set a key"
                )
            if value is not None and not value.isascii():
                raise ValueError(f"`serve.{name}` must be ASCII (it travels in an HTTP header)")
        return self

    @model_validator(mode="after")
    def _open_admin_on_loopback_only(self) -> ServeConfig:
        if self.insecure_open_admin and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"`serve.insecure_open_admin` opens admin routes to anyone who can connect: it "
                f"is allowed only with serve.host on loopback (127.0.0.1), not {self.host!r}"
            )
        return self

    @model_validator(mode="after")
    def _admission_below_serve_limit(self) -> ServeConfig:
        if self.gateway_admission_limit > self.gateway_max_ongoing_requests:
            raise ValueError(
                f"`serve.gateway_admission_limit` ({self.gateway_admission_limit}) exceeds "
                f"`serve.gateway_max_ongoing_requests` ({self.gateway_max_ongoing_requests}): "
                "Serve would queue the extra requests before the gateway could answer 429"
            )
        return self


class ExperimentsConfig(Section):
    enabled: bool = Field(True, description="Assign requests to A/B experiments when serving.")
    files: list[Path] = Field(
        default_factory=list,
        description="YAML files whose `definitions:` list experiments to start with Serve, e.g. "
        "[configs/experiments/example.yaml].",
    )
    seed: int | None = Field(
        None, description="Seed of weighted/random/bandit draws (None = fresh randomness)."
    )
    refresh_interval_s: float = Field(
        2.0,
        gt=0,
        description="How often a gateway replica re-reads running experiments and bandit "
        "counts from the store (other replicas' changes arrive within this).",
    )
