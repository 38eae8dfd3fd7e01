"""Durable acknowledgements: a request id the gateway hands out is in the store.

The finding: request rows were committed by a background writer after the reply, so a
crash lost rows whose id clients held, and failures (committed before their error reply)
and successes (after the reply) took different paths. Now the default
``store.request_log_commit: durable`` replies only after the row's group commit, failures
of A/B-assigned requests go through the same writer, and a SIGKILL of the process that owns
the writer loses no acknowledged row.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

from qlp_ray.core.config import load_config
from qlp_ray.experiments.ab import ExperimentSpec, VariantSpec
from qlp_ray.experiments.store import ExperimentStore
from qlp_ray.serve.telemetry.recording import RequestRecorder
from qlp_ray.store.database import FeedbackStore

REPO = Path(__file__).resolve().parents[2]


def _cfg(home: Path, mode: str | None = None):
    store = {} if mode is None else {"request_log_commit": mode}
    return load_config(overrides={"paths": {"home": str(home)}, "store": store}, environ={})


def _target(experiment: str | None = None, variant: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(adapter=None, version=None, domain="ml", routed=False,
                           confidence=None, external=None, experiment=experiment,
                           variant=variant)  # fmt: skip


async def _serve(recorder: RequestRecorder, rid: str, **target) -> str:
    return await recorder.record(request_id=rid, target=_target(**target), prompt="p",
                                 gen={"text": "r"}, latency_s=0.01, user=None)  # fmt: skip


def test_durable_is_the_default_and_concurrent_replies_share_commits(tmp_path):
    recorder = RequestRecorder(_cfg(tmp_path), "base")
    assert recorder.mode == "durable"

    async def burst() -> list[str]:
        served = [_serve(recorder, f"ok-{i}", experiment="e", variant="v1") for i in range(40)]
        failed = [recorder.record_failure(f"bad-{i}", "e", "v2", status=424, latency_s=0.02,
                                          user=None) for i in range(10)]  # fmt: skip
        return await asyncio.gather(*served, *failed)

    try:
        assert asyncio.run(burst()) == ["committed"] * 50
        # answered == reply may go out: nothing pending, every row readable by another client
        assert recorder.writer.pending == 0
        other = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
        assert other.get_request("ok-39").experiment == "e"
        arms = [VariantSpec(name="v1", target="a@1"), VariantSpec(name="v2", target="a@2")]
        spec = ExperimentSpec(id="e", variants=arms)
        stats = ExperimentStore(other.engine).variant_stats(spec)
        assert stats["v2"].failures == 10 and stats["v1"].impressions == 40
        other.close()
        st = recorder.writer.stats()
        assert st["written"] == 50 and st["failed"] == 0
        assert st["batches"] < 50  # successes and failures shared group commits
    finally:
        recorder.close()


def test_a_refused_row_is_reported_not_recorded(tmp_path):
    recorder = RequestRecorder(_cfg(tmp_path), "base")
    try:
        assert asyncio.run(_serve(recorder, "same")) == "committed"
        assert asyncio.run(_serve(recorder, "same")) == "failed"  # duplicate id
        assert recorder.store_errors == 1
    finally:
        recorder.close()


def test_background_is_an_explicit_lossy_opt_out(tmp_path):
    recorder = RequestRecorder(_cfg(tmp_path, "background"), "base")
    try:
        assert asyncio.run(_serve(recorder, "q-1")) == "queued"
        assert recorder.writer.flush(timeout=5)
        assert recorder.store.get_request("q-1").response == "r"
    finally:
        recorder.close()


# What the gateway does per request, in a process of its own: 16 concurrent "requests";
# one in four is an A/B-assigned failure. A line is printed when the reply would go out.
_GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from types import SimpleNamespace
    from qlp_ray.core.config import load_config
    from qlp_ray.serve.telemetry.recording import RequestRecorder

    cfg = load_config(overrides={"paths": {"home": sys.argv[1]},
                                 "store": {"request_log_commit": sys.argv[2]}}, environ={})
    rec = RequestRecorder(cfg, "base")
    target = SimpleNamespace(adapter=None, version=None, domain="ml", routed=False,
                             confidence=None, external=None, experiment="e", variant="v1")

    async def client(c):
        i = 0
        while True:
            rid = f"c{c}-{i}"
            if i % 4 == 3:
                state = await rec.record_failure(rid, "e", "v2", status=424, latency_s=0.01,
                                                 user=None)
                kind = "fail"
            else:
                state = await rec.record(request_id=rid, target=target, prompt="p" * 200,
                                         gen={"text": "r" * 400}, latency_s=0.01, user=None)
                kind = "ok"
            if state in ("committed", "queued"):
                sys.stdout.write(f"{kind} {rid}\\n")
                sys.stdout.flush()
            i += 1

    async def main():
        await asyncio.gather(*(client(c) for c in range(16)))

    asyncio.run(main())
    """
)


def _acknowledged_then_sigkill(home: Path, mode: str, n: int) -> list[tuple[str, str]]:
    FeedbackStore(f"sqlite:///{home / 'feedback.db'}").close()  # migrate before the race
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _GATEWAY, str(home), mode],
                            stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    acked: list[tuple[str, str]] = []
    try:
        deadline = time.monotonic() + 90
        while len(acked) < n and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            kind, rid = line.split()
            acked.append((kind, rid))
        proc.send_signal(signal.SIGKILL)  # replies just received; writers mid-batch
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) == n, f"the gateway process acknowledged only {len(acked)} requests"
    return acked


def _stored(home: Path) -> tuple[set[str], set[str]]:
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    with store.engine.connect() as conn:
        answered = {r[0] for r in conn.exec_driver_sql("SELECT id FROM requests")}
        failed = {r[0] for r in conn.exec_driver_sql("SELECT request_id FROM experiment_failures")}
    store.close()
    return answered, failed


def test_acknowledged_requests_survive_sigkill_of_the_writer_process(tmp_path):
    acked = _acknowledged_then_sigkill(tmp_path, "durable", 600)
    answered, failed = _stored(tmp_path)
    assert {rid for kind, rid in acked if kind == "ok"} <= answered
    assert {rid for kind, rid in acked if kind == "fail"} <= failed
    assert sum(kind == "fail" for kind, _ in acked) >= 100  # both paths were exercised
