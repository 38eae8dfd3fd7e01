"""The one list of training methods ``qlp train --method`` (and the REST fine-tuning jobs) run.

Every method is a :class:`MethodSpec` in :data:`METHODS`: the data shape its ``--data`` file
must have, which options it needs (``--reward``, ``--teacher``) or accepts (``--parent``),
its held-out metric, and its *runner*. The CLI, the REST route and the README table derive
their checks and messages from this table; nothing else lists methods.

=========  =============================  ===============================================
method     data rows (JSONL)              runner
=========  =============================  ===============================================
sft        instruction capsules           Ray Train TRL SFT (``ray_train``), PEFT LoRA
adalora    instruction capsules           the same, AdaLoRA (both: ``--init meta``)
qlora      instruction capsules           the same, 4-bit base (CUDA only)
dpo        {prompt, chosen, rejected}     Ray Train TRL DPO (``ray_rlhf``)
grpo/rloo  {prompt} (or capsules)         Ray Train TRL GRPO / RLOO + ``--reward``
reward     {prompt, chosen, rejected}     Ray Train TRL RewardTrainer (LoRA + score head)
distill    instruction capsules           Ray Train logit distillation from ``--teacher``
ppo        {prompt} (or capsules)         Ray Train PPO (``ray_ppo``) + ``--reward``
=========  =============================  ===============================================

``lora`` is accepted as an alias of ``sft`` (the PEFT method name ``qlp train`` took before).

Adding a method (the extension point, e.g. PPO): set its entry's ``runner`` to
``"module.path:function"``. The function is called as ``runner(cfg, run)`` with a
:class:`qlp_ray.train.method_runs.MethodRun` (method spec, domain, data and held-out paths,
workers, steps, overrides, run name, the resolved parent / reward / teacher, progress) and
returns a :class:`qlp_ray.train.pipeline.TrainedAdapter` whose ``metrics`` hold at least
``<metric>_before`` / ``<metric>_after`` of its :attr:`MethodSpec.metric`; signing,
registration and the lineage metadata (method, parent, dataset SHA-256, metrics) are done
for it by :func:`qlp_ray.train.method_runs.train_method_and_register`. An entry whose
``runner`` is None fails with "not available yet" before any Ray work.

This module is pure (no torch, no Ray): the table, the data-shape checks and the parsing
of ``--reward`` / ``--parent`` specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.core.jsonl import iter_jsonl


@dataclass(frozen=True)
class DataShape:
    """What every row of a method's data file must hold.

    ``required``: fields every row needs (strings); ``one_of``: at least one of these.
    """

    name: str
    description: str
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()


INSTRUCTIONS = DataShape(
    "instructions",
    "capsules {instruction, input?, output, domain}",
    required=("instruction", "output"),
)
PREFERENCES = DataShape(
    "preference pairs", "{prompt, chosen, rejected}", required=("prompt", "chosen", "rejected")
)
PROMPTS = DataShape(
    "prompts",
    "{prompt} (or capsules: the instruction is the prompt)",
    one_of=("prompt", "instruction"),
)


@dataclass(frozen=True)
class MethodSpec:
    """One training method. ``metric`` is its held-out metric (``higher``: better when higher).

    ``kind``: what the run registers, an ``adapter`` (causal LM LoRA, routable) or a
    ``reward_model`` (LoRA + score head, loadable by ``--reward reward-model:<id>``).
    ``peft``: the ``train.method`` an SFT-family entry trains with.
    ``accepts_init``: ``--init meta`` / ``--init <meta-init id@N>`` can start its LoRA
    (the meta-learned weights are LoRA / AdaLoRA weights of the run's own shape).
    ``hyperparameters``: fields of its config section ``train.<name>`` a run may set
    (``qlp train --<field>``, a job's ``hyperparameters.<field>``).
    """

    name: str
    summary: str
    data: DataShape
    metric: str
    higher: bool
    runner: str | None
    kind: Literal["adapter", "reward_model"] = "adapter"
    needs_reward: bool = False
    needs_teacher: bool = False
    accepts_parent: bool = False
    peft: str | None = None
    accepts_init: bool = False
    hyperparameters: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.runner is not None


_SFT_RUNNER = "qlp_ray.train.pipeline:train_and_register"  # registers itself
_RLHF_RUNNER = "qlp_ray.train.method_runs:run_rlhf"

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("sft", "supervised fine-tuning, LoRA", INSTRUCTIONS, "eval_loss", False,
                   _SFT_RUNNER, peft="lora", accepts_init=True),
        MethodSpec("adalora", "supervised fine-tuning, AdaLoRA", INSTRUCTIONS, "eval_loss",
                   False, _SFT_RUNNER, peft="adalora", accepts_init=True),
        MethodSpec("qlora", "supervised fine-tuning, 4-bit base + LoRA (CUDA)", INSTRUCTIONS,
                   "eval_loss", False, _SFT_RUNNER, peft="qlora"),
        MethodSpec("dpo", "direct preference optimisation", PREFERENCES, "preference_margin",
                   True, _RLHF_RUNNER, accepts_parent=True),
        MethodSpec("ppo", "PPO: LoRA policy, value head, KL to the reference", PROMPTS,
                   "mean_reward", True, "qlp_ray.train.ppo_run:run_ppo", needs_reward=True,
                   accepts_parent=True,
                   hyperparameters=("kl_coef", "kl_target", "clip_range", "ppo_epochs")),
        MethodSpec("grpo", "group-relative policy optimisation", PROMPTS, "mean_reward", True,
                   _RLHF_RUNNER, needs_reward=True, accepts_parent=True),
        MethodSpec("rloo", "REINFORCE leave-one-out", PROMPTS, "mean_reward", True,
                   _RLHF_RUNNER, needs_reward=True, accepts_parent=True),
        MethodSpec("reward", "reward model on preference pairs", PREFERENCES, "pair_accuracy",
                   True, _RLHF_RUNNER, kind="reward_model"),
        MethodSpec("distill", "logit distillation from a teacher", INSTRUCTIONS, "eval_kl",
                   False, _RLHF_RUNNER, needs_teacher=True, accepts_parent=True),
    )
}  # fmt: skip
"""Every training method, in the order the CLI and the README list them."""

ALIASES: dict[str, str] = {"lora": "sft"}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
SFT_FAMILY: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.peft is not None)
REWARD_KINDS = ("keyword", "domain", "json", "regex", "reward-model")
INIT_KINDS = ("base", "meta")  # or a registered meta-init: id[@version]


def quoted(names: tuple[str, ...] | list[str]) -> str:
    """``"'a', 'b' or 'c'"`` for an error message."""
    q = [repr(n) for n in names]
    return q[0] if len(q) == 1 else f"{', '.join(q[:-1])} or {q[-1]}"


def get_method(name: str, param: str = "method") -> MethodSpec:
    """The spec of ``name`` (or its alias); ``InvalidRequest`` lists the methods."""
    spec = METHODS.get(ALIASES.get(name, name))
    if spec is None:
        raise InvalidRequest(
            f"method must be {quoted(METHOD_NAMES)} (or 'lora' for sft), got {name!r}",
            param=param,
        )
    return spec


def require_available(spec: MethodSpec) -> None:
    if not spec.available:
        raise InvalidRequest(
            f"method {spec.name!r} is not available yet in this version of qlp_ray "
            f"(available: {quoted([m.name for m in METHODS.values() if m.available])})",
            param="method",
        )


# --- options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    """A parsed ``--reward``: ``keyword:a,b``, ``domain`` (the run's domain validators),
    ``domain:<name>``, ``json``, ``regex:<pattern>`` or ``reward-model:<id>[@version]``."""

    kind: str
    arg: str = ""
    version: int | None = None

    def as_text(self) -> str:
        if self.kind == "reward-model":
            return f"reward-model:{self.arg}" + (f"@{self.version}" if self.version else "")
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def parse_reward(text: str, param: str = "reward") -> RewardSpec:
    kind, _, arg = text.strip().partition(":")
    if kind not in REWARD_KINDS:
        raise InvalidRequest(
            f"`{param}` must start with {quoted(REWARD_KINDS)}, got {text!r}", param=param
        )
    if kind in ("keyword", "regex", "reward-model") and not arg.strip():
        raise InvalidRequest(f"`{param}` {kind!r} needs a value after ':'", param=param)
    if kind == "keyword":
        words = [w.strip() for w in arg.split(",") if w.strip()]
        if not words:
            raise InvalidRequest(f"`{param}` keyword: needs comma-separated words", param=param)
        return RewardSpec(kind, ",".join(words))
    if kind == "json" and arg:
        raise InvalidRequest(f"`{param}` 'json' takes no value", param=param)
    if kind == "reward-model":
        adapter_id, version = parse_ref(arg, param)
        return RewardSpec(kind, adapter_id, version)
    return RewardSpec(kind, arg.strip())


def parse_ref(text: str, param: str = "parent") -> tuple[str, int | None]:
    """``id`` or ``id@version`` (version >= 1)."""
    adapter_id, at, version = text.strip().partition("@")
    if not adapter_id:
        raise InvalidRequest(f"`{param}` needs an adapter id, got {text!r}", param=param)
    if not at:
        return adapter_id, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidRequest(
            f"`{param}` version must be a positive integer (id@3), got {text!r}", param=param
        )
    return adapter_id, int(version)


def parse_init(text: str | None, param: str = "init") -> tuple[str, str | None, int | None]:
    """``--init``: ``base`` (PEFT's default init, the default), ``meta`` (the registry's
    meta-init for these inputs, computed when missing) or a registered meta-init
    ``id[@version]`` -> ``("base" | "meta" | "ref", id, version)``."""
    text = (text or "base").strip()
    if text in INIT_KINDS:
        return text, None, None
    adapter_id, version = parse_ref(text, param)
    return "ref", adapter_id, version


def check_options(
    spec: MethodSpec,
    *,
    reward: str | None = None,
    teacher: str | None = None,
    parent: str | None = None,
    init: str | None = None,
) -> RewardSpec | None:
    """Refuse options the method does not take and missing ones it needs (``param`` names
    the option: ``reward``, ``teacher``, ``parent``, ``init``); returns the parsed reward."""
    if init and parse_init(init)[0] != "base" and not spec.accepts_init:
        takes = [m.name for m in METHODS.values() if m.accepts_init]
        raise InvalidRequest(
            f"method {spec.name!r} cannot start from a meta-init (init applies to "
            f"{quoted(takes)}; dpo/ppo/grpo/rloo/distill continue an adapter with parent)",
            param="init",
        )
    if spec.needs_reward and not reward:
        raise InvalidRequest(
            f"method {spec.name!r} needs a reward: {quoted(REWARD_KINDS)} "
            "(e.g. keyword:deploy,docker or reward-model:<id>)",
            param="reward",
        )
    if reward and not spec.needs_reward:
        raise InvalidRequest(f"method {spec.name!r} takes no reward", param="reward")
    if spec.needs_teacher and not teacher:
        raise InvalidRequest(
            f"method {spec.name!r} needs a teacher: an adapter id[@version] or 'base'",
            param="teacher",
        )
    if teacher and not spec.needs_teacher:
        raise InvalidRequest(f"method {spec.name!r} takes no teacher", param="teacher")
    if parent and not spec.accepts_parent:
        takes = [m.name for m in METHODS.values() if m.accepts_parent]
        raise InvalidRequest(
            f"method {spec.name!r} does not start from a parent adapter "
            f"(parent applies to {quoted(takes)})",
            param="parent",
        )
    if parent:
        parse_ref(parent, "parent")
    if teacher and teacher != "base":
        parse_ref(teacher, "teacher")
    return parse_reward(reward) if reward else None


# --- data shapes ------------------------------------------------------------------------


def check_row(shape: DataShape, row: Any, where: str) -> None:
    """``InvalidRequest`` naming ``where`` (file:line) and the missing or non-string field."""
    if not isinstance(row, dict):
        raise InvalidRequest(
            f"{where}: a {shape.name} row must be a JSON object ({shape.description})"
        )
    for key in shape.required:
        if key not in row:
            raise InvalidRequest(
                f"{where}: missing field {key!r} (a {shape.name} row is {shape.description})"
            )
        if not isinstance(row[key], str) or not row[key].strip():
            raise InvalidRequest(f"{where}: field {key!r} must be a non-empty string")
    if shape.one_of and not any(
        isinstance(row.get(k), str) and row[k].strip() for k in shape.one_of
    ):
        raise InvalidRequest(
            f"{where}: missing field {shape.one_of[0]!r} "
            f"(a {shape.name} row is {shape.description})"
        )
    if shape is PREFERENCES and row["chosen"] == row["rejected"]:
        raise InvalidRequest(f"{where}: chosen and rejected are identical")


def validate_data_file(spec: MethodSpec, path: str | Path, what: str = "data") -> int:
    """Check every row of ``path`` against ``spec``'s data shape; returns the row count.

    Errors name the file, the line and the missing field, before any Ray work.
    """
    p = Path(path)
    n = 0
    for lineno, row in iter_jsonl(p, f"{what} file"):
        check_row(spec.data, row, f"{what} {p}:{lineno}")
        n += 1
    if n == 0:
        raise InvalidRequest(f"{what} file {p} holds no rows ({spec.data.description})")
    return n


def prompt_of(row: dict[str, Any]) -> str:
    """The prompt of a :data:`PROMPTS` row: ``prompt``, else the capsule's templated prompt."""
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return row["prompt"]
    from qlp_ray.models.prompt import format_prompt

    return format_prompt(row["instruction"], row.get("input") or "")


def methods_table() -> list[dict[str, str]]:
    """Rows of the README / ``qlp train --help`` table."""
    return [
        {
            "method": m.name,
            "what": m.summary,
            "data": m.data.description,
            "needs": ", ".join(
                x for x, on in (("--reward", m.needs_reward), ("--teacher", m.needs_teacher)) if on
            ),
            "metric": f"{m.metric} ({'higher' if m.higher else 'lower'} is better)",
            "registers": m.kind.replace("_", " "),
            "init": "base, meta, <meta-init id@N>" if m.accepts_init else "base",
        }
        for m in METHODS.values()
    ]


__all__ = [
    "ALIASES",
    "INIT_KINDS",
    "INSTRUCTIONS",
    "METHODS",
    "METHOD_NAMES",
    "PREFERENCES",
    "PROMPTS",
    "REWARD_KINDS",
    "SFT_FAMILY",
    "DataShape",
    "MethodSpec",
    "RewardSpec",
    "check_options",
    "check_row",
    "get_method",
    "methods_table",
    "parse_init",
    "parse_ref",
    "parse_reward",
    "prompt_of",
    "quoted",
    "require_available",
    "validate_data_file",
]
