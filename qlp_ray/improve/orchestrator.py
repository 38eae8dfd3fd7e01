"""One continual-learning cycle: feedback -> candidate adapter (SFT, or DPO from the
production adapter) -> held-out check -> signed registration -> live A/B experiment ->
promote or roll back.

The engines sit behind three small protocols (a trainer, a held-out evaluator and a
traffic splitter), so this module holds only the control flow. Every step is an
event in the store keyed by its inputs (domain, data hash, production version):
a restarted orchestrator finds finished steps and reuses them, so it never trains
the same data twice nor promotes twice. Registration is idempotent through the
signed ``improve_key`` in the new version's metadata.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qlp_ray.core.errors import AdapterNotFound, InvalidRequest
from qlp_ray.data.capsules import bundled_domains, load_capsules, sample_path
from qlp_ray.data.label_queue import weak_area_weights
from qlp_ray.improve.decisions import (
    VariantStats,
    choose_method,
    idempotency_key,
    judge_candidate,
    judge_experiment,
    plan_training,
)
from qlp_ray.improve.feedback_data import DomainExamples, collect_examples
from qlp_ray.store.leases import HeldLease, LeaseHeld, Leases
from qlp_ray.train.pipeline import TrainedAdapter, run_pipeline

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig
    from qlp_ray.registry.store import AdapterRecord, Registry
    from qlp_ray.store.database import FeedbackStore
    from qlp_ray.store.records import EventRecord

logger = logging.getLogger(__name__)
ACTOR = "orchestrator"


TrainedCandidate = TrainedAdapter  # adapter dir, run metrics, metadata (e.g. the centroid)


class CandidateTrainer(Protocol):
    def train(self, domain: str, train_path: Path, heldout_path: Path) -> TrainedCandidate: ...


class HeldoutEvaluator(Protocol):
    def evaluate(self, adapter_dir: Path | None, records: list[dict]) -> dict[str, float]:
        """Metrics of the base model with ``adapter_dir`` (None: the bare base model)."""
        ...


class PairEvaluator(Protocol):
    def evaluate_pairs(self, adapter_dir: Path | None, pairs: list[Any]) -> dict[str, float]:
        """Held-out preference metrics (``preference_margin``, ``preference_accuracy``)."""
        ...


class TrafficSplitter(Protocol):
    def start(self, name: str, adapter_id: str, control: int, treatment: int, share: float): ...

    def stop(self, name: str) -> None: ...

    # optional: ``stats(name) -> (control, treatment)``; without it the store is read


PREFERENCE_METRIC = "preference_margin"  # the DPO gate: mean held-out log-prob margin


@dataclass
class DomainOutcome:
    domain: str
    # skipped | rejected | promoted | experiment_started | experiment_running | kept | busy
    # (busy: another orchestrator holds the domain's lease; the reason names it)
    action: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


def experiment_stats(store: FeedbackStore, name: str) -> tuple[VariantStats, VariantStats]:
    """(control, treatment): thumbs-rated requests and thumbs-up counts per arm."""
    counts = {"control": [0, 0], "treatment": [0, 0]}
    for req, fb in store.feedback_with_requests(kinds=["thumbs"], experiment=name):
        arm = counts.get(req.variant or "")
        if arm is not None:
            arm[0] += 1
            arm[1] += fb.value == 1
    return VariantStats(*counts["control"]), VariantStats(*counts["treatment"])


class Orchestrator:
    """Runs cycles over the domains; all state lives in the store and the registry."""

    def __init__(
        self,
        cfg: QLPConfig,
        store: FeedbackStore,
        registry: Registry,
        trainer: CandidateTrainer,
        evaluator: HeldoutEvaluator,
        splitter: TrafficSplitter | None = None,
        *,
        base_model: str,
        progress: Callable[[str], None] | None = None,
        preference_evaluator: PairEvaluator | None = None,
        owner: str | None = None,
    ) -> None:
        self.cfg, self.imp = cfg, cfg.improve
        self.store, self.registry = store, registry
        self.trainer, self.evaluator, self.splitter = trainer, evaluator, splitter
        self.pair_evaluator = preference_evaluator
        self.base_model = base_model
        self._progress = progress
        # who holds a domain's lease while this orchestrator runs its round
        self.owner = owner or f"{socket.gethostname()}:pid{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leases = Leases(store)
        self._lease: HeldLease | None = None

    def say(self, message: str) -> None:
        logger.info("%s", message)
        if self._progress is not None:
            self._progress(message)

    def _event(self, kind: str, key: str | None, domain: str, version: int | None, **payload):
        return self.store.record_event(kind, adapter_id=domain, version=version, actor=ACTOR,
                                       payload=payload, idempotency_key=key)  # fmt: skip

    # --- the cycle ------------------------------------------------------------------------
    def run_cycle(self, domains: Sequence[str] | None = None) -> list[DomainOutcome]:
        """Review running experiments, then improve every due domain (weakest first). Each
        domain's round holds its lease: a domain another orchestrator is working on is
        ``busy`` (the reason names who and until when)."""
        outcomes = [self._leased(ev.adapter_id or "", lambda ev=ev: self._review_running(ev))
                    for ev in self.running_experiments()]  # fmt: skip
        busy = {o.domain for o in outcomes}  # one step per domain and cycle
        names = list(domains or self.imp.domains or self._store_domains())
        examples = {d: self._examples(d) for d in names if d not in busy}
        new = {d: self._new_samples(d, ex) for d, ex in examples.items()}

        weights = weak_area_weights(self.store.adapter_stats())
        due = {p.domain: p for p in plan_training(new, self.imp.min_new_samples, weights)}
        for d in names:
            if d in busy:
                continue
            if d not in due:
                why = f"{new[d]} new samples < {self.imp.min_new_samples}"
                outcomes.append(DomainOutcome(d, "skipped", why, {"new": new[d]}))
                continue
            outcomes.append(self._leased(d, lambda d=d: self._improve_if_due(d, due[d].reason)))
        return outcomes

    def _leased(self, domain: str, work: Callable[[], DomainOutcome]) -> DomainOutcome:
        """``work()`` while holding (and renewing) the domain's lease, or ``busy``."""
        try:
            lease = self.leases.hold(f"improve:{domain}", self.owner, self.imp.lease_ttl_s,
                                     what=f"round for {domain}")  # fmt: skip
        except LeaseHeld as exc:
            self.say(str(exc))
            h = exc.holder
            return DomainOutcome(domain, "busy", str(exc), {
                "owner": h.owner, "since": h.acquired_at, "expires_at": h.expires_at})  # fmt: skip
        self._lease = lease
        try:
            with lease:
                return work()
        finally:
            self._lease = None

    def _check_lease(self) -> None:
        """Before changing the registry or traffic: still this orchestrator's round?"""
        if self._lease is not None:
            self._lease.check()

    def _review_running(self, start: EventRecord) -> DomainOutcome:
        """Review ``start`` if it still runs now that the lease is ours."""
        name = (start.payload or {}).get("name")
        if all(e.payload["name"] != name for e in self.running_experiments()):
            return DomainOutcome(start.adapter_id or "", "skipped",
                                 f"experiment {name} was decided meanwhile")  # fmt: skip
        return self.review_experiment(start)

    def _improve_if_due(self, domain: str, why: str) -> DomainOutcome:
        """``improve_domain`` if the domain is still due now that the lease is ours (a round
        that just finished elsewhere has consumed its new samples)."""
        ex = self._examples(domain)
        new = self._new_samples(domain, ex)
        if new < self.imp.min_new_samples:
            return DomainOutcome(domain, "skipped", f"{new} new samples < "
                                 f"{self.imp.min_new_samples}", {"new": new})  # fmt: skip
        return self.improve_domain(domain, ex, why)

    def _store_domains(self) -> list[str]:
        return sorted({r.domain for r in self.store.query_requests() if r.domain})

    def _examples(self, domain: str) -> DomainExamples:
        return collect_examples(self.store, domain, min_score=self.imp.min_validation_score,
                                heldout_fraction=self.imp.heldout_fraction)  # fmt: skip

    def _new_samples(self, domain: str, ex: DomainExamples) -> int:
        """Examples beyond those of the last *concluded* attempt (a decision or an experiment);
        an attempt that crashed half-way stays due, and its finished steps are reused."""
        concluded = [e for e in self.store.query_events(kinds=["decision", "experiment"],
                                                        adapter_id=domain)
                     if e.actor == ACTOR and "data_hash" in (e.payload or {})]  # fmt: skip
        if not concluded:
            return ex.size
        last = concluded[-1].payload or {}
        if last["data_hash"] == ex.data_hash:
            return 0
        return max(0, ex.size - int(last.get("examples", 0)))

    def _production(self, domain: str) -> int | None:
        try:
            return (
                self.registry.get(domain).version
                if self.registry.storage.versions(domain)
                else None
            )
        except AdapterNotFound:
            return None

    def improve_domain(self, domain: str, ex: DomainExamples, why: str) -> DomainOutcome:
        """Train → held-out check → register through the one pipeline, then promote the
        candidate or start its experiment; every step is reused when already done."""
        prod = self._production(domain)
        can_dpo = self.pair_evaluator is not None and hasattr(self.trainer, "train_dpo")
        pairs = len(ex.pairs_train) if can_dpo else 0
        method, method_why = choose_method(self.imp.method, pairs, self.imp.min_pairs,
                                           prod is not None)  # fmt: skip
        if method == "dpo" and not can_dpo:
            raise InvalidRequest("improve.method is dpo but this orchestrator has no DPO engines")
        if method == "sft" and not ex.heldout:
            return DomainOutcome(domain, "skipped", "no held-out examples to evaluate on")
        if method == "dpo" and not ex.pairs_heldout:
            return DomainOutcome(domain, "skipped", "no held-out preference pairs to evaluate on")
        parts: tuple = (ex.data_hash, prod) if method == "sft" else (ex.data_hash, prod, "dpo")
        self.say(f"{domain}: {why}; production is {f'v{prod}' if prod else 'the base model'}; "
                 f"method {method} ({method_why})")  # fmt: skip

        experiment = prod is not None and self.splitter is not None
        register_key = idempotency_key("register", domain, *parts)
        if method == "dpo":
            train = lambda: self._candidate_dpo(domain, ex, prod, parts)  # noqa: E731
            evaluate = lambda c: self._evaluate_pairs(domain, ex, c.adapter_dir, prod, parts)  # noqa: E731
        else:
            train = lambda: self._candidate(domain, ex, prod, parts)  # noqa: E731
            evaluate = lambda c: self._evaluate(domain, ex, c.adapter_dir, prod, parts)  # noqa: E731
        self._check_lease()
        result = run_pipeline(
            self.cfg,
            domain=domain,
            adapter_id=domain,
            train=train,
            evaluate=evaluate,
            metadata=lambda cand, verdict: {
                **cand.metadata,
                "improve_key": register_key,
                "metrics": {
                    verdict.metric: verdict.candidate,
                    **{k: v for k, v in cand.metrics.items() if k == "train_loss"},
                },
                "data_hash": parts[0],
                "method": method,
                "parent": None if prod is None else {"adapter_id": domain, "version": prod},
                "examples": len(ex.pairs_train) if method == "dpo" else len(ex.train),
            },
            registered=lambda: self._registered(domain, register_key),
            make_current=not experiment,
            registry=self.registry,
            base_model=self.base_model,
            progress=self.say,
        )
        self._check_lease()  # training took a while: still ours before deciding?
        verdict = result.verdict
        numbers = verdict.to_dict()
        seen = {"data_hash": ex.data_hash, "examples": ex.size, "method": method}
        if result.record is None:
            self._event("decision", idempotency_key("decision", domain, *parts), domain, prod,
                        outcome="keep", **numbers, **seen)  # fmt: skip
            return DomainOutcome(domain, "rejected", verdict.reason, numbers)

        version = result.record.version
        numbers["candidate_version"] = version
        if not experiment:
            if prod is not None:
                self.registry.set_current(domain, version, reason=verdict.reason)
            self._event("decision", idempotency_key("decision", domain, *parts), domain, version,
                        outcome="promote", **numbers, **seen)  # fmt: skip
            return DomainOutcome(domain, "promoted", verdict.reason, numbers)
        name = f"improve-{domain}-v{version}"
        self.splitter.start(name, domain, prod, version, self.imp.experiment_share)
        self._event("experiment", idempotency_key("experiment", domain, *parts), domain, version,
                    name=name, status="started", control=prod, treatment=version,
                    share=self.imp.experiment_share, gate=numbers, **seen)  # fmt: skip
        self.say(f"{domain}: experiment {name}: v{prod} vs v{version}")
        outcome = DomainOutcome(domain, "experiment_started", verdict.reason, numbers)
        if self.imp.experiment_timeout_s > 0:
            return self.wait_for_experiment(name, self.imp.experiment_timeout_s) or outcome
        return outcome

    def _candidate(self, domain, ex: DomainExamples, prod, parts) -> TrainedAdapter:
        """The candidate of this data and production: trained before (its event), or now."""
        key = idempotency_key("train", domain, *parts)
        done = self.store.find_event(key)
        if done is not None and Path(done.payload["adapter_dir"]).is_dir():
            self.say(f"{domain}: reusing candidate trained before ({done.payload['adapter_dir']})")
            return TrainedAdapter(Path(done.payload["adapter_dir"]),
                                  done.payload.get("metrics", {}),
                                  done.payload.get("metadata", {}))  # fmt: skip
        data_dir = self.cfg.paths.runs / "improve" / f"{domain}-{ex.data_hash[:12]}"
        train_path, held_path = ex.write(data_dir)
        self.say(f"{domain}: training a candidate on {len(ex.train)} examples")
        trained = self.trainer.train(domain, train_path, held_path)
        self._event("train", None if done else key, domain, prod,
                    adapter_dir=str(trained.adapter_dir), examples=len(ex.train),
                    heldout=len(ex.heldout), data_hash=ex.data_hash, metrics=trained.metrics,
                    metadata=trained.metadata)  # fmt: skip
        return trained

    def _candidate_dpo(self, domain, ex: DomainExamples, prod, parts) -> TrainedAdapter:
        """DPO from the production adapter on the training pairs (reused when trained before)."""
        key = idempotency_key("train", domain, *parts)
        done = self.store.find_event(key)
        if done is not None and Path(done.payload["adapter_dir"]).is_dir():
            self.say(f"{domain}: reusing the DPO candidate {done.payload['adapter_dir']}")
            return TrainedAdapter(Path(done.payload["adapter_dir"]),
                                  done.payload.get("metrics", {}),
                                  done.payload.get("metadata", {}))  # fmt: skip
        parent = self.registry.verified_path(domain, prod)
        self.say(f"{domain}: DPO on {len(ex.pairs_train)} preference pairs from v{prod}")
        run_name = f"improve-dpo-{domain}-{ex.data_hash[:12]}"
        trained = self.trainer.train_dpo(domain, ex.pairs_train, parent, run_name)  # type: ignore[attr-defined]
        self._event("train", None if done else key, domain, prod, method="dpo",
                    adapter_dir=str(trained.adapter_dir), pairs=len(ex.pairs_train),
                    heldout_pairs=len(ex.pairs_heldout), data_hash=ex.data_hash,
                    metrics=trained.metrics, metadata=trained.metadata)  # fmt: skip
        return trained

    def _evaluate_pairs(self, domain, ex: DomainExamples, cand_dir, prod, parts):
        """The DPO gate: held-out preference margin of the candidate vs production."""
        key = idempotency_key("evaluate", domain, *parts)
        done = self.store.find_event(key)
        if done is not None:
            cand_m, prod_m = done.payload["candidate"], done.payload["production"]
        else:
            pairs = ex.pairs_heldout[: self.imp.max_eval_examples]
            self.say(f"{domain}: scoring candidate and production on {len(pairs)} held-out pairs")
            cand_m = self.pair_evaluator.evaluate_pairs(cand_dir, pairs)  # type: ignore[union-attr]
            prod_dir = self.registry.verified_path(domain, prod) if prod else None
            prod_m = self.pair_evaluator.evaluate_pairs(prod_dir, pairs)  # type: ignore[union-attr]
        verdict = judge_candidate(PREFERENCE_METRIC, cand_m, prod_m, self.imp.margin)
        if done is None:
            self._event("evaluate", key, domain, prod, method="dpo", candidate=cand_m,
                        production=prod_m, verdict=verdict.to_dict())  # fmt: skip
        self.say(f"{domain}: {verdict.reason}")
        return verdict

    def heldout_records(self, domain: str, ex: DomainExamples) -> list[dict]:
        """Feedback held-out examples plus, when configured, the domain's bundled held-out
        set: a fixed yardstick, so a candidate trained on bad feedback cannot win on it."""
        half = max(1, self.imp.max_eval_examples // 2)
        records = list(ex.heldout)
        if self.imp.trusted_heldout:
            if domain in bundled_domains():
                trusted = load_capsules(sample_path(domain, "heldout"))
                fixed = [c.model_dump(include={"instruction", "input", "output", "domain"})
                         for c in trusted]  # fmt: skip
                room = max(half, self.imp.max_eval_examples - len(records))
                records = records[: self.imp.max_eval_examples - min(room, len(fixed))]
                records += fixed[:room]
        return records[: self.imp.max_eval_examples]

    def _evaluate(self, domain, ex, cand_dir, prod, parts):
        key = idempotency_key("evaluate", domain, *parts)
        done = self.store.find_event(key)
        if done is not None:
            cand_m, prod_m = done.payload["candidate"], done.payload["production"]
        else:
            records = self.heldout_records(domain, ex)
            self.say(f"{domain}: evaluating candidate and production on {len(records)} held-out")
            cand_m = self.evaluator.evaluate(cand_dir, records)
            prod_dir = self.registry.verified_path(domain, prod) if prod else None
            prod_m = self.evaluator.evaluate(prod_dir, records)
        verdict = judge_candidate(self.imp.metric, cand_m, prod_m, self.imp.margin)
        if done is None:
            self._event("evaluate", key, domain, prod, candidate=cand_m, production=prod_m,
                        verdict=verdict.to_dict())  # fmt: skip
        self.say(f"{domain}: {verdict.reason}")
        return verdict

    def _registered(self, domain: str, key: str) -> AdapterRecord | None:
        """The signed version an earlier pass registered under ``key`` (idempotent reruns)."""
        for rec in self.registry.list(all_versions=True):
            if rec.adapter_id == domain and rec.signed and rec.metadata.get("improve_key") == key:
                self.say(f"{domain}: candidate already registered as v{rec.version}")
                return rec
        return None

    # --- experiments ----------------------------------------------------------------------
    def running_experiments(self) -> list[EventRecord]:
        events = self.store.query_events(kinds=["experiment"])
        ended = {(e.payload or {}).get("name") for e in events
                 if (e.payload or {}).get("status") != "started"}  # fmt: skip
        return [
            e for e in events if e.payload["status"] == "started" and e.payload["name"] not in ended
        ]

    def experiment_stats(self, name: str) -> tuple[VariantStats, VariantStats]:
        """The arms' counts from the serving experiments runtime (the splitter), else the store."""
        read = getattr(self.splitter, "stats", None)
        return read(name) if read is not None else experiment_stats(self.store, name)

    def review_experiment(self, start: EventRecord) -> DomainOutcome:
        """Read the experiment's stats; promote (candidate current, experiment stopped) or
        roll back (experiment stopped, production re-pointed, candidate retired), each an
        audited decision with its numbers; or leave it running."""
        p = start.payload or {}
        name, domain = p["name"], start.adapter_id or ""
        control, treatment = self.experiment_stats(name)
        v = judge_experiment(control, treatment, alpha=self.imp.experiment_alpha,
                             min_trials=self.imp.experiment_min_trials,
                             max_trials=self.imp.experiment_max_trials,
                             elapsed_s=time.time() - start.ts,
                             max_s=self.imp.experiment_max_s)  # fmt: skip
        numbers = {"experiment": name, **v.numbers}
        if v.outcome == "continue":
            return DomainOutcome(domain, "experiment_running", v.reason, numbers)
        key = idempotency_key("experiment-end", domain, name)
        self._check_lease()
        if self.splitter is not None:
            self.splitter.stop(name)
        why = f"{name}: {v.reason}"
        if v.outcome == "promote":
            self.registry.set_current(domain, p["treatment"], reason=why)
        else:  # production keeps serving; the audit says the candidate lost and why
            self.registry.rollback(domain, p["control"], reason=f"{why}; v{p['treatment']} retired",
                                   withdraw=[p["treatment"]])  # fmt: skip
        end = {"name": name, "status": v.outcome, "control": p["control"],
               "treatment": p["treatment"], "reason": v.reason, **v.numbers}  # fmt: skip
        self._event("experiment", key, domain, p["treatment"], **end)
        self._event("decision", idempotency_key("decision-end", domain, name), domain,
                    p["treatment"] if v.outcome == "promote" else p["control"],
                    outcome=v.outcome, experiment=name, control=p["control"],
                    treatment=p["treatment"], reason=v.reason, method=p.get("method", "sft"),
                    retired=None if v.outcome == "promote" else p["treatment"],
                    **v.numbers)  # fmt: skip
        action = "promoted" if v.outcome == "promote" else "kept"
        kept = p["treatment"] if v.outcome == "promote" else p["control"]
        self.say(f"{domain}: {name}: {v.reason} -> v{kept} serves")
        return DomainOutcome(domain, action, v.reason, numbers)

    def wait_for_experiment(self, name: str, timeout_s: float, poll_s: float = 0.5):
        """Review ``name`` until it ends or ``timeout_s`` passes; the final outcome or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            start = next((e for e in self.running_experiments() if e.payload["name"] == name), None)
            if start is None:
                raise InvalidRequest(f"no running experiment {name!r}")
            outcome = self.review_experiment(start)
            if outcome.action != "experiment_running":
                return outcome
            time.sleep(poll_s)
        return None
