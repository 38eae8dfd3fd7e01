"""Run any method of :data:`qlp_ray.train.methods.METHODS` and register the result, signed,
with its lineage: ``qlp train --method`` (and so the REST jobs and ``ray job submit``).

:func:`train_method_and_register` checks the options and the data file (before any Ray
work), resolves ``--parent`` / ``--teacher`` / ``--reward reward-model:`` through the
registry (verified before anything is loaded), calls the method's runner and registers
what it returns through :func:`qlp_ray.train.pipeline.run_pipeline`, adding the lineage:
``method``, ``kind``, ``parent`` (id and version), ``data_hash`` (SHA-256 of the data
file), ``metrics`` (the held-out metric before and after, train loss, steps, seconds).

Runners: the SFT family registers through :func:`qlp_ray.train.pipeline.train_and_register`
(Ray Train SFT, its own lineage: PEFT method, dataset hash, held-out eval loss);
:func:`run_rlhf` runs DPO, GRPO, RLOO, the reward model and distillation on Ray Train via
``ray_rlhf``. The held-out
metric is measured on rank 0 before and after training by a picklable evaluator.
"""

from __future__ import annotations

import importlib
import json
import logging
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import InvalidRequest, TrainingError
from qlp_ray.core.jsonl import iter_jsonl
from qlp_ray.data.capsules import file_sha256
from qlp_ray.models.base import base_model_id
from qlp_ray.registry import AdapterRecord, Registry, validate_adapter_id
from qlp_ray.train import tracking
from qlp_ray.train.methods import (
    PREFERENCES,
    MethodSpec,
    RewardSpec,
    check_options,
    get_method,
    parse_ref,
    prompt_of,
    require_available,
    validate_data_file,
)
from qlp_ray.train.node_files import (
    BaseModelRef,
    adapter_on_node,
    base_model_ref,
    load_teacher,
    model_ref,
    resolve_base_on_node,
)
from qlp_ray.train.pipeline import ProgressFn, TrainedAdapter, run_pipeline, training_centroid
from qlp_ray.train.run_metrics import METRICS_FILE, write_loss_curve

logger = logging.getLogger(__name__)

MAX_COMPLETION = 16  # tokens sampled per completion by GRPO / RLOO and their reward metric
# train.lr_scheduler -> the HF scheduler name (TRL's configs take lr_scheduler_type)
_HF_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass(frozen=True)
class Ref:
    """A registry entry a run starts from or loads (verified): id, version, directory."""

    adapter_id: str
    version: int
    path: str

    def lineage(self) -> dict[str, Any]:
        return {"adapter_id": self.adapter_id, "version": self.version}


@dataclass
class MethodRun:
    """Everything a runner gets (see the extension point in :mod:`qlp_ray.train.methods`)."""

    spec: MethodSpec
    domain: str
    data_path: Path
    heldout_path: Path | None = None
    workers: int | None = None
    steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    run_name: str = ""
    label: str = ""
    parent: Ref | None = None
    reward: RewardSpec | None = None
    reward_model: Ref | None = None
    teacher: Ref | None = None  # None with spec.needs_teacher: the base model is the teacher
    progress: ProgressFn | None = None
    init: str = ""  # --init: "" / "base", "meta" or a meta-init id[@version] (sft, adalora)


# --- registry references ----------------------------------------------------------------


def resolve_ref(cfg: QLPConfig, text: str, param: str, kind: str) -> Ref:
    """Verify ``id[@version]`` (signature, files, base model) and check its ``kind``."""
    adapter_id, version = parse_ref(text, param)
    record = Registry(cfg).verify(adapter_id, version, expected_base_model=base_model_id(cfg))
    found = (record.metadata or {}).get("kind", "adapter")
    if found != kind:
        names = {"adapter": "an adapter", "reward_model": "a reward model"}
        raise InvalidRequest(
            f"`{param}` {text!r} is {names.get(found, found)}, not {names[kind]}", param=param
        )
    return Ref(record.adapter_id, int(record.version), str(record.path))


# --- data -------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in iter_jsonl(path, "data file")]


def _split(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    if len(items) < 2:
        raise TrainingError(
            f"{len(items)} row(s): need at least 2 to split off a held-out part "
            "(or pass a held-out file)"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(items) - 1, max(1, round(len(items) * fraction)))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def _items(run: MethodRun, cfg: QLPConfig) -> tuple[list[Any], list[Any], list[str]]:
    """(train items, held-out items, routing texts) in the form the method's trainer takes."""
    from qlp_ray.data.format import routing_text, to_prompt_completion
    from qlp_ray.train.dpo import PreferencePair

    method = run.spec.name
    if method == "distill":
        from qlp_ray.train.ray_train import load_training_data  # capsules, domain checked

        data = load_training_data(
            run.domain,
            run.data_path,
            run.heldout_path,
            eval_fraction=cfg.train.eval_fraction,
            seed=cfg.train.seed,
        )

        def text(c: Any) -> str:
            pc = to_prompt_completion(c)
            return pc["prompt"] + pc["completion"]

        return (
            [text(c) for c in data.train],
            [text(c) for c in data.heldout],
            [routing_text(c) for c in data.train],
        )

    def convert(rows: list[dict[str, Any]]) -> list[Any]:
        if run.spec.data is PREFERENCES:
            return [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
        return [prompt_of(r) for r in rows]

    train = convert(_rows(run.data_path))
    if run.heldout_path is not None:
        held = convert(_rows(run.heldout_path))
    else:
        train, held = _split(train, cfg.train.eval_fraction, cfg.train.seed)
    prompts = [p.prompt if isinstance(p, PreferencePair) else p for p in train]
    return train, held, [routing_text(p) for p in prompts]


# --- held-out evaluators (picklable: they travel to the Ray Train workers) ---------------


@dataclass
class PreferenceEval:
    """DPO: mean log-prob margin chosen - rejected, and the share of pairs it ranks right."""

    pairs: list[Any]

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        from qlp_ray.train._rlhf_common import sequence_logprob

        was = model.training
        model.eval()
        try:
            margins = [
                sequence_logprob(model, tokenizer, p.prompt, p.chosen)
                - sequence_logprob(model, tokenizer, p.prompt, p.rejected)
                for p in self.pairs
            ]
        finally:
            model.train(was)
        return {
            "preference_margin": sum(margins) / len(margins),
            "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
        }


@dataclass
class RewardEval:
    """GRPO / RLOO / PPO: mean reward of seeded samples on the held-out prompts."""

    prompts: list[str]
    reward: Any
    samples_per_prompt: int = 4
    max_new_tokens: int = MAX_COMPLETION
    seed: int = 0

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        from qlp_ray.train.rl import mean_reward

        value = mean_reward(
            model,
            tokenizer,
            self.prompts,
            self.reward,
            samples_per_prompt=self.samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )
        return {"mean_reward": value}


@dataclass
class PairAccuracyEval:
    """Reward model: share of held-out pairs scored chosen > rejected, and the mean gap."""

    pairs: list[Any]

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        from qlp_ray.train.rewards import pair_accuracy

        accuracy, gap = pair_accuracy(model, tokenizer, self.pairs)
        return {"pair_accuracy": accuracy, "score_gap": gap}


@dataclass
class KLEval:
    """Distillation: mean per-token KL(teacher || student) on the held-out texts; the teacher
    is a :func:`~qlp_ray.train.node_files.model_ref`, loaded on the worker's node."""

    teacher_path: dict[str, Any] | str
    texts: list[str]
    _teacher: Any = None

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        from qlp_ray.train.distill import student_teacher_kl

        if self._teacher is None:
            self._teacher = load_teacher(self.teacher_path).eval()
        return {"eval_kl": student_teacher_kl(model, self._teacher, tokenizer, self.texts)}


class RewardModelFunc:
    """A TRL reward function scoring ``prompt + completion`` with a registered reward model
    (loaded on first use, in the worker: the base model resolved on its node, the adapter's
    files, which the driver verified, carried in the function itself)."""

    def __init__(self, base: BaseModelRef | str, adapter_dir: str | Path) -> None:
        self.model = model_ref(base, adapter_dir)
        self.__name__ = "reward_model"  # TRL logs rewards by function name
        self._loaded: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        from qlp_ray.train.rewards import load_reward_lora, score_with_reward_model

        if self._loaded is None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="qlp-reward-") as tmp:
                adapter = adapter_on_node(self.model, tmp)
                base = resolve_base_on_node(self.model["base"])
                self._loaded = load_reward_lora(base, str(adapter))
        model, tok = self._loaded
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return score_with_reward_model(model, tok, texts)


def reward_function(
    spec: RewardSpec, domain: str, base_path: BaseModelRef | str, model: Ref | None
) -> Any:
    """The TRL reward function of a ``--reward`` spec (``base_path``: a
    :func:`~qlp_ray.train.node_files.base_model_ref`, or a directory / hub id)."""
    from qlp_ray.train import rewards

    if spec.kind == "keyword":
        return rewards.keyword_reward(spec.arg.split(","))
    if spec.kind == "domain":
        return rewards.domain_reward(spec.arg or domain)
    if spec.kind == "json":
        return rewards.json_object_reward
    if spec.kind == "regex":
        return rewards.regex_reward(spec.arg)
    if model is None:
        raise InvalidRequest("reward-model: needs a verified registry entry", param="reward")
    return RewardModelFunc(base_path, model.path)


# --- runners ----------------------------------------------------------------------------


def _teacher_ref(run: MethodRun, base: BaseModelRef) -> dict[str, Any]:
    """The teacher for the workers: the base, or base + the verified adapter's files (merged
    on the worker's node: :func:`~qlp_ray.train.node_files.load_teacher`)."""
    return model_ref(base, run.teacher.path if run.teacher is not None else None)


def run_rlhf(cfg: QLPConfig, run: MethodRun) -> TrainedAdapter:
    """dpo / grpo / rloo / reward / distill on Ray Train (``ray_rlhf``), with the method's
    held-out metric measured before and after training."""
    from qlp_ray.train.ray_rlhf import RLHFOptions, train_rlhf_on_ray
    from qlp_ray.train.ray_train import _use_gpu, effective_train_config
    from qlp_ray.train.storage import run_storage

    method = run.spec.name
    tc = effective_train_config(
        cfg, workers=run.workers, steps=run.steps, overrides=run.overrides, method="lora"
    )
    base_path = base_model_ref(cfg)  # resolved by each worker on its node
    train, held, routing = _items(run, cfg)
    kwargs: dict[str, Any] = {}
    if method in ("grpo", "rloo"):
        if tc.batch_size % 2:
            raise InvalidRequest(
                f"{method} samples a group per prompt: --batch-size must be even, got "
                f"{tc.batch_size}",
                param="batch_size",
            )
        kwargs = {
            "num_generations": 4 if tc.batch_size % 4 == 0 else 2,
            "max_completion_length": MAX_COMPLETION,
        }
    options = RLHFOptions(
        steps=tc.steps,
        batch_size=tc.batch_size,
        learning_rate=tc.learning_rate,
        lr_scheduler_type=_HF_SCHEDULERS[tc.lr_scheduler],
        warmup_ratio=tc.warmup_ratio,
        grad_accum=tc.grad_accum,
        checkpoint_every=min(tc.checkpoint_every, tc.steps) if tc.checkpoint_every else tc.steps,
        early_stopping_patience=tc.early_stopping_patience,
        rank=tc.rank,
        alpha=tc.alpha,
        target_modules=tuple(tc.target_modules),
        seed=tc.seed,
        method_kwargs=kwargs,
    )
    run_dir = cfg.paths.runs / run.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    reward_funcs, teacher_path, eval_data = None, None, None
    if method in ("grpo", "rloo"):
        assert run.reward is not None
        reward = reward_function(run.reward, run.domain, base_path, run.reward_model)
        reward_funcs = [reward]
        evaluate: Any = RewardEval(held, reward, seed=tc.seed)
    elif method == "dpo":
        evaluate, eval_data = PreferenceEval(held), held
    elif method == "reward":
        evaluate = PairAccuracyEval(held)
    elif method == "distill":
        teacher_path = _teacher_ref(run, base_path)
        evaluate, eval_data = KLEval(teacher_path, held), held
    else:
        raise InvalidRequest(f"no Ray Train runner for method {method!r}", param="method")
    storage, filesystem = run_storage(cfg)
    label = run.label or run.domain
    _say(run.progress, f"training {label} ({method}, {tc.steps} steps) on Ray Train")
    t0 = time.perf_counter()
    tracked = tracking.start_run(  # MLflow: params now, per-checkpoint metrics while it trains
        cfg,
        run.run_name,
        {"train": {**asdict(options), "target_modules": list(options.target_modules)},
         "method": method, "domain": run.domain, "data_path": str(run.data_path)},
        tags={"qlp.domain": run.domain, "qlp.method": method},
    )  # fmt: skip
    try:
        result = train_rlhf_on_ray(
            method,  # type: ignore[arg-type]
            base_path=base_path,
            data=train,
            options=options,
            output_dir=run_dir / "adapter",
            storage_path=storage,
            storage_filesystem=filesystem,
            metrics_file=run_dir / METRICS_FILE,
            run_name=run.run_name,
            eval_data=eval_data,
            reward_funcs=reward_funcs,
            teacher_path=teacher_path,
            parent_path=run.parent.path if run.parent else None,
            evaluate=evaluate,
            workers=tc.workers,
            cpus_per_worker=tc.cpus_per_worker,
            use_gpu=_use_gpu(tc),
            model_dtype=cfg.model.dtype,
            max_failures=tc.max_failures,
            placement_timeout_s=tc.placement_timeout_s,
            ray_callbacks=tracking.report_callback(tracked),
        )
    except BaseException:
        tracking.finish_run(tracked, failed=True)
        raise
    seconds = round(time.perf_counter() - t0, 2)
    m = result.metrics
    metric = run.spec.metric
    metrics = {k: float(v) for k, v in m.items() if k.endswith(("_before", "_after"))}
    metrics.update(train_loss=float(m.get("train_loss", float("nan"))), steps=tc.steps,
                   seconds=seconds)  # fmt: skip
    _say(
        run.progress,
        f"held-out {metric} {metrics.get(f'{metric}_before', float('nan')):.4f} -> "
        f"{metrics.get(f'{metric}_after', float('nan')):.4f}",
    )
    metadata = run_metadata(cfg, run, options, metrics, seconds=seconds, workers=tc.workers,
                            n_train=len(train), n_heldout=len(held), routing=routing,
                            resumed_from_step=m.get("resumed_from_step", 0.0))  # fmt: skip
    write_loss_curve(run_dir, title=f"{run.run_name} ({method}, {tc.steps} steps)")
    tracking.finish_run(tracked, metrics=metrics)
    if tracked is not None:
        metadata["mlflow_run_id"] = tracked[1]
    return TrainedAdapter(result.adapter_dir, metrics, metadata, tracked)


def run_metadata(
    cfg: QLPConfig,
    run: MethodRun,
    options: Any,
    metrics: dict[str, Any],
    *,
    seconds: float,
    workers: int,
    n_train: int,
    n_heldout: int,
    routing: list[str],
    resumed_from_step: float = 0.0,
) -> dict[str, Any]:
    """Write the run's ``metrics.json``; the version's metadata: metrics, the options
    dataclass it trained with, the run, and the routing centroid of an adapter."""
    (cfg.paths.runs / run.run_name / "metrics.json").write_text(json.dumps(metrics, indent=1))
    metadata: dict[str, Any] = {
        "metrics": metrics,
        "train_config": {**asdict(options), "target_modules": list(options.target_modules)},
        "run": {"run_name": run.run_name, "run_seconds": seconds, "workers": workers,
                "train_records": n_train, "heldout_records": n_heldout,
                "resumed_from_step": resumed_from_step},
    }  # fmt: skip
    if run.spec.kind == "adapter":
        metadata["centroid"] = training_centroid(cfg, routing)
    return metadata


def _say(progress: ProgressFn | None, message: str) -> None:
    logger.info("%s", message)
    if progress is not None:
        progress(message)


def load_runner(spec: MethodSpec) -> Any:
    """The runner function named by ``spec.runner`` (``module:function``)."""
    require_available(spec)
    module, _, name = str(spec.runner).partition(":")
    return getattr(importlib.import_module(module), name)


# --- the entry point ----------------------------------------------------------------------


def prepare_run(
    cfg: QLPConfig,
    method: str,
    *,
    domain: str,
    data_path: str | Path,
    heldout_path: str | Path | None = None,
    reward: str | None = None,
    teacher: str | None = None,
    parent: str | None = None,
    **kw: Any,
) -> MethodRun:
    """Check everything that can be checked before Ray: method, options, data shape, and
    the registry entries named by ``parent`` / ``teacher`` / ``reward-model:``."""
    spec = get_method(method)
    require_available(spec)
    validate_adapter_id(domain, "domain")
    reward_spec = check_options(spec, reward=reward, teacher=teacher, parent=parent,
                                init=kw.get("init"))  # fmt: skip
    validate_data_file(spec, data_path, "--data")
    if heldout_path is not None:
        validate_data_file(spec, heldout_path, "--heldout")
    run = MethodRun(spec, domain, Path(data_path), Path(heldout_path) if heldout_path else None,
                    reward=reward_spec, **kw)  # fmt: skip
    if parent:
        run.parent = resolve_ref(cfg, parent, "parent", "adapter")
    if teacher and teacher != "base":
        run.teacher = resolve_ref(cfg, teacher, "teacher", "adapter")
    if reward_spec is not None and reward_spec.kind == "reward-model":
        text = reward_spec.arg + (f"@{reward_spec.version}" if reward_spec.version else "")
        run.reward_model = resolve_ref(cfg, text, "reward", "reward_model")
    return run


def lineage(run: MethodRun) -> dict[str, Any]:
    """The lineage keys every registered version of a method run carries."""
    out: dict[str, Any] = {
        "method": run.spec.name,
        "kind": run.spec.kind,
        "parent": run.parent.lineage() if run.parent else None,
        "data_hash": file_sha256(run.data_path),
        "data_file": run.data_path.name,
    }
    if run.heldout_path is not None:
        out["heldout_hash"] = file_sha256(run.heldout_path)
    if run.reward is not None:
        out["reward"] = run.reward.as_text()
        if run.reward_model is not None:
            out["reward_model"] = run.reward_model.lineage()
    if run.spec.needs_teacher:
        out["teacher"] = run.teacher.lineage() if run.teacher else "base"
    return out


def train_method_and_register(
    cfg: QLPConfig,
    run: MethodRun,
    *,
    adapter_id: str | None = None,
    keep_run_adapter: bool = False,
) -> AdapterRecord:
    """Run ``run.spec``'s runner on Ray Train, then sign and register the result (an
    adapter, or a reward model under ``<domain>-reward`` by default) with its lineage."""
    default_id = f"{run.domain}-reward" if run.spec.kind == "reward_model" else run.domain
    adapter_id = validate_adapter_id(adapter_id or default_id)
    run.label = run.label or adapter_id
    if run.run_name:
        validate_adapter_id(run.run_name, "run name")
    elif run.spec.peft is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run.run_name = f"{run.domain}-{run.spec.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    if run.spec.peft is not None:  # sft / adalora / qlora: the SFT pipeline, as always
        from qlp_ray.train.pipeline import train_and_register

        return train_and_register(
            cfg,
            domain=run.domain,
            data_path=run.data_path,
            heldout_path=run.heldout_path,
            adapter_id=adapter_id,
            method=run.spec.peft,
            workers=run.workers,
            steps=run.steps,
            progress=run.progress,
            keep_run_adapter=keep_run_adapter,
            overrides=run.overrides,
            run_name=run.run_name or None,
            init=run.init or None,
        )
    runner = load_runner(run.spec)

    def metadata(trained: TrainedAdapter, _verdict: Any) -> dict[str, Any]:
        return {**trained.metadata, **lineage(run)}

    outcome = run_pipeline(
        cfg,
        domain=run.domain,
        adapter_id=adapter_id,
        train=lambda: runner(cfg, run),
        metadata=metadata,
        progress=run.progress,
    )
    if not keep_run_adapter:
        shutil.rmtree(outcome.trained.adapter_dir, ignore_errors=True)
    if outcome.record is None:
        raise TrainingError(f"{adapter_id} was trained but not registered")
    return outcome.record


__all__ = [
    "KLEval",
    "MethodRun",
    "PairAccuracyEval",
    "PreferenceEval",
    "Ref",
    "RewardEval",
    "RewardModelFunc",
    "lineage",
    "load_runner",
    "prepare_run",
    "resolve_ref",
    "reward_function",
    "run_rlhf",
    "train_method_and_register",
]
