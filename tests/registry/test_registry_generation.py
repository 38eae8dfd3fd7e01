"""Registry change marker (generation), retire/promote, and the polled watch (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlp_ray.core.errors import AdapterNotFound
from qlp_ray.registry.generation import GenerationWatch
from qlp_ray.registry.store import Registry
from tests.registry.test_registry import cfg, register, registry  # noqa: F401 - fixtures
from tests.registry.test_s3_storage import BUCKET, s3_cfg  # noqa: F401 - fixture

__all__ = ["cfg", "registry", "s3_cfg"]


def test_every_change_moves_the_generation(registry: Registry, tmp_path: Path) -> None:
    seen = [registry.generation()]
    assert seen[0] is None  # an empty store has no marker yet
    register(registry, tmp_path, "sql", domain="dataeng")
    seen.append(registry.generation())
    register(registry, tmp_path, "sql", seed=1, domain="dataeng", make_current=False)
    seen.append(registry.generation())
    registry.set_current("sql", 2)
    seen.append(registry.generation())
    registry.retire("sql")
    seen.append(registry.generation())
    assert len(set(seen)) == len(seen)  # all different
    assert [int(g.split()[0]) for g in seen[1:]] == [1, 2, 3, 4]
    marker = Path(registry.cfg.registry_uri) / ".generation"
    assert marker.read_text() == seen[-1]


def test_retire_hides_the_adapter_until_a_promotion(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "sql", domain="dataeng")
    register(registry, tmp_path, "css", domain="frontend")
    assert registry.retire("sql", reason="replaced") == 1
    assert [r.adapter_id for r in registry.list()] == ["css"]
    assert {r.adapter_id for r in registry.list(all_versions=True)} == {"sql", "css"}
    with pytest.raises(AdapterNotFound, match="'sql' is retired"):
        registry.get("sql")
    with pytest.raises(AdapterNotFound, match="retired"):
        registry.retire("sql")  # already retired
    assert registry.get("sql", 1).version == 1  # pinned versions stay resolvable
    events = [e.kind for e in registry.audit.events("sql")]
    assert "retire" in events
    registry.set_current("sql", 1, reason="back")  # a promotion serves it again
    assert [r.adapter_id for r in registry.list()] == ["css", "sql"]
    registry.retire("sql")
    register(registry, tmp_path, "sql", seed=2, domain="dataeng")  # so does a new version
    assert registry.get("sql").version == 2
    with pytest.raises(AdapterNotFound, match="unknown adapter 'nope'"):
        registry.retire("nope")


def test_watch_polls_at_most_every_poll_s_and_sees_changes_made_during_a_rebuild() -> None:
    marker = {"value": "1 a"}
    now = {"t": 100.0}
    reads: list[str] = []

    def read() -> str:
        reads.append(marker["value"])
        return marker["value"]

    watch = GenerationWatch(read, poll_s=0.5, clock=lambda: now["t"])
    watch.commit(watch.snapshot())  # built from "1 a"
    assert not watch.changed()  # within poll_s: no read at all
    assert reads == ["1 a"]
    now["t"] += 0.6
    assert not watch.changed() and len(reads) == 2  # read, unchanged
    marker["value"] = "2 b"
    assert not watch.changed()  # still within poll_s of the last read
    now["t"] += 0.6
    assert watch.changed() and watch.changes == 1
    generation = watch.snapshot()  # a rebuild starts from "2 b" ...
    marker["value"] = "3 c"  # ... and the registry changes while it runs
    watch.commit(generation)
    now["t"] += 0.6
    assert watch.changed()  # noticed on the next poll
    watch.commit(watch.snapshot())
    now["t"] += 0.6
    assert not watch.changed()


def test_async_watch_reads_off_the_event_loop_and_only_when_due() -> None:
    import asyncio
    import threading

    now = {"t": 100.0}
    threads: list[str] = []

    def read() -> str:
        threads.append(threading.current_thread().name)
        return "2 b"

    watch = GenerationWatch(read, poll_s=0.5, clock=lambda: now["t"])
    watch.commit("1 a")

    async def check() -> list[bool]:
        loop_thread = threading.current_thread().name
        first = await watch.changed_async()  # due: one read, in a worker thread
        second = await watch.changed_async()  # within poll_s: no read
        assert threads and loop_thread not in threads
        return [first, second]

    assert asyncio.run(check()) == [True, False]
    assert len(threads) == 1 and watch.changes == 1


def test_s3_storage_keeps_generation_and_retired_flag(s3_cfg, tmp_path: Path) -> None:
    from qlp_ray.registry.s3 import S3Storage

    storage = S3Storage.from_uri(f"s3://{BUCKET}/gen", s3_cfg, tmp_path / "cache")
    assert storage.read_generation() is None
    storage.bump_generation()
    first = storage.read_generation()
    storage.bump_generation()
    second = storage.read_generation()
    assert first.split()[0] == "1" and second.split()[0] == "2" and first != second
    assert not storage.is_retired("sql")
    storage.set_retired("sql", True)
    assert storage.is_retired("sql") and not storage.is_retired("css")
    storage.set_retired("sql", False)
    assert not storage.is_retired("sql")
    assert storage.adapter_ids() == []  # the markers are not adapters


def test_cli_retire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.cli.test_registry_cli import invoke
    from tests.cli.test_registry_cli import register as cli_register

    home = tmp_path / "home"
    monkeypatch.setenv("QLP_HOME", str(home))
    from qlp_ray import cli

    monkeypatch.setattr(cli.state, "config_path", None)
    monkeypatch.setattr(cli.console, "_width", 400)
    assert invoke("keys", "init")[0].exit_code == 0
    cli_register(tmp_path, "sql", 0)
    result, out = invoke("adapters", "retire", "sql", "--reason", "obsolete")
    assert result.exit_code == 0 and "sql: retired (was serving v1)" in out, out
    result, out = invoke("adapters", "list", "--json")
    assert json.loads(result.output) == []
    result, out = invoke("adapters", "retire", "sql")
    assert result.exit_code == 1 and "is retired" in out
