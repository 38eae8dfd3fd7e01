"""Issue 22: two orchestrators at once (two `qlp improve` processes, or a restarted pod
while the old one lives) run one round per domain: a lease in the store, renewed while the
round runs, refused with a message naming its holder, taken over only after it expired
(audited). On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from qlp_ray.store.database import FeedbackStore
from qlp_ray.store.leases import TAKEOVER_EVENT, LeaseHeld, LeaseLost, Leases
from tests.helpers.postgres import PostgresUnavailable, postgres_database

TRAIN_S = 8.0  # one round's training time: longer than the lease TTL, so it must renew
TTL_S = 3.0


@pytest.fixture(scope="module")
def pg_url():
    try:
        with postgres_database() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL not available: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    url = request.getfixturevalue("pg_url")
    from sqlalchemy import create_engine

    from qlp_ray.store import schema

    engine = create_engine(url)  # one database for the module: start each test empty
    schema.metadata.drop_all(engine)  # the migrations table too
    engine.dispose()
    return url


def test_held_lease_names_its_holder_and_is_taken_over_after_expiry(store_url) -> None:
    store = FeedbackStore(store_url)
    leases = Leases(store)
    a = leases.hold("improve:api", "host-a:pid1", ttl_s=2.0, what="round for api")
    a._stop.set()  # owner A "dies": no more renewals
    with pytest.raises(LeaseHeld) as err:
        leases.acquire("improve:api", "host-b:pid2", 2.0, what="round for api")
    msg = str(err.value)
    assert msg.startswith("round for api is being run by host-a:pid1 since ")
    assert "UTC; expires at " in msg and err.value.http_status == 409
    time.sleep(2.1)
    b = leases.hold("improve:api", "host-b:pid2", ttl_s=30, what="round for api")
    [ev] = store.query_events(kinds=[TAKEOVER_EVENT])
    assert ev.actor == "host-b:pid2" and ev.adapter_id == "api"
    assert ev.payload["previous_owner"] == "host-a:pid1" and ev.payload["lease"] == "improve:api"
    assert not leases.renew("improve:api", "host-a:pid1", 1.0)  # A wakes up: not its lease
    with pytest.raises(LeaseLost, match="lost its lease to host-b:pid2"):
        a.check()
    a.close()  # releases nothing that is not A's
    assert leases.get("improve:api").owner == "host-b:pid2"
    b.check()
    b.close()
    assert leases.get("improve:api") is None  # released: the next round acquires fresh
    store.close()


def test_a_held_lease_is_renewed_while_its_work_runs(store_url) -> None:
    store = FeedbackStore(store_url)
    leases = Leases(store)
    with leases.hold("improve:sql", "a", ttl_s=1.5):
        for _ in range(4):  # 3.2 s: past the TTL twice over, yet never free
            time.sleep(0.8)
            with pytest.raises(LeaseHeld):
                leases.acquire("improve:sql", "b", 1.5)
    assert leases.acquire("improve:sql", "b", 1.5).owner == "b"
    assert store.query_events(kinds=[TAKEOVER_EVENT]) == []  # a release, not a takeover
    store.close()


def _orchestrate(home: str, url: str, barrier, results) -> None:
    """One `qlp improve --once` process: the real orchestrator, store and signed registry
    with the flow tests' engines (a trainer writing real safetensors, slowly)."""
    from qlp_ray.core.config import load_config
    from qlp_ray.improve.orchestrator import Orchestrator
    from qlp_ray.registry.store import Registry
    from tests.improve.test_orchestrator_flow import Evaluator, Trainer

    class SlowTrainer(Trainer):
        def train(self, domain, train_path, heldout_path):
            time.sleep(TRAIN_S)
            return super().train(domain, train_path, heldout_path)

    cfg = load_config(overrides={"paths": {"home": home}, "store": {"url": url},
                                 "improve": {"min_new_samples": 20, "lease_ttl_s": TTL_S,
                                             "live_ab": False}}, environ={})  # fmt: skip
    store = FeedbackStore(url)
    trainer = SlowTrainer(Path(home) / f"cands-{mp.current_process().pid}")
    orch = Orchestrator(cfg, store, Registry(cfg), trainer, Evaluator(), None,
                        base_model="builtin:test")  # fmt: skip
    barrier.wait(120)
    actions = []
    for _ in range(2):  # a busy domain is tried again after the TTL: still busy (renewed)
        [out] = orch.run_cycle()
        actions.append((out.action, out.reason))
        if out.action != "busy":
            break
        time.sleep(TTL_S + 1.0)
    results.put((orch.owner, actions, len(trainer.calls)))
    store.close()


def test_two_orchestrators_at_once_run_one_round(store_url, tmp_path) -> None:
    from qlp_ray.core.config import load_config
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry
    from tests.improve.test_orchestrator_flow import _good_feedback

    home = tmp_path / "home"
    cfg = load_config(overrides={"paths": {"home": str(home)}, "store": {"url": store_url}},
                      environ={})  # fmt: skip
    init_keys(cfg.paths.keys)
    store = FeedbackStore(store_url)
    _good_feedback(store, 40, "first")

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_orchestrate, args=(str(home), store_url, barrier, results))
             for _ in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    got = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    winner = [g for g in got if g[1][-1][0] == "promoted"]
    loser = [g for g in got if g[1][-1][0] != "promoted"]
    assert len(winner) == 1 and len(loser) == 1, got
    assert winner[0][2] == 1 and loser[0][2] == 0  # one training run in all
    actions = [a for a, _ in loser[0][1]]
    assert actions == ["busy", "busy"], loser  # refused, and again after the TTL: renewed
    why = loser[0][1][0][1]
    assert why.startswith(f"round for api is being run by {winner[0][0]} since ")
    assert "; expires at " in why
    assert len(store.query_events(kinds=["train"])) == 1
    assert [e.payload["outcome"] for e in store.query_events(kinds=["decision"])] == ["promote"]
    assert store.query_events(kinds=[TAKEOVER_EVENT]) == []
    assert [r.version for r in Registry(cfg).list(all_versions=True)] == [1]
    assert Leases(store).get("improve:api") is None  # released after the round
    store.close()


def test_first_takers_racing_for_a_new_lease_get_one_holder_and_no_error(store_url) -> None:
    """No row exists yet, so FOR UPDATE locks nothing: without the advisory lock two first
    takers both INSERT and one fails with a unique violation (seen in CI on PostgreSQL)."""
    import threading

    store = FeedbackStore(store_url)
    leases = Leases(store)
    for round_ in range(5):  # a fresh lease name each round: the first-insert race again
        name = f"improve:race{round_}"
        barrier, got = threading.Barrier(6), []

        def take(i: int, name=name, barrier=barrier, got: list = got) -> None:
            barrier.wait()
            try:
                leases.acquire(name, f"owner-{i}", 30.0)
                got.append("held")
            except LeaseHeld:
                got.append("refused")
            except Exception as exc:  # noqa: BLE001 - the failure this test is about
                got.append(repr(exc))

        threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(got) == ["held"] + ["refused"] * 5, got
