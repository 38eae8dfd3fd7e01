"""CoalescingRouter: concurrent routing calls of one gateway travel as few route_many calls."""

from __future__ import annotations

import asyncio

import pytest

from qlp_ray.serve.route_client import MAX_CALLS, CoalescingRouter


class _Method:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return asyncio.ensure_future(self._fn(*args))


class _Handle:
    """A Router-like callee (what a deployment handle would reach), recording its calls."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.in_flight = self.most_in_flight = 0
        self.fail_on = fail_on
        self.route_many = _Method(self._route_many)
        self.table = _Method(self._table)

    async def _route_many(self, texts: list[str]) -> list[dict]:
        self.calls.append(list(texts))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if self.fail_on in texts:
            raise RuntimeError("router overloaded")
        return [{"target": f"to-{t}"} for t in texts]

    async def _table(self) -> dict:
        return {"adapters": {}}


def test_a_lone_call_goes_at_once_and_concurrent_calls_share_few_calls():
    handle = _Handle()
    router = CoalescingRouter(handle, max_texts=8)

    async def main():
        alone = await router.route.remote("first")
        texts = [f"t{i}" for i in range(20)]
        burst = await asyncio.gather(*(router.route.remote(t) for t in texts))
        return alone, texts, burst, await router.table.remote()

    alone, texts, burst, table = asyncio.run(main())
    assert alone == {"target": "to-first"} and handle.calls[0] == ["first"]
    assert [d["target"] for d in burst] == [f"to-{t}" for t in texts]  # each its own answer
    sent = handle.calls[1:]
    assert sorted(t for call in sent for t in call) == sorted(texts)  # each text once
    assert max(len(call) for call in sent) == 8 and len(sent) < len(texts)
    assert handle.most_in_flight == MAX_CALLS
    assert router.route.stats == {"calls": len(handle.calls), "texts": 21}
    assert table == {"adapters": {}}  # other methods pass through


def test_a_failed_call_fails_only_its_own_texts():
    handle = _Handle(fail_on="bad")
    router = CoalescingRouter(handle, max_texts=2)

    async def main():
        futures = [router.route.remote(t) for t in ("a", "bad", "c", "d")]
        return await asyncio.gather(*futures, return_exceptions=True)

    out = asyncio.run(main())
    # "a" and "bad" go at once (MAX_CALLS in flight); "c" and "d" wait and travel together
    assert handle.calls == [["a"], ["bad"], ["c", "d"]]
    assert isinstance(out[1], RuntimeError) and "overloaded" in str(out[1])
    assert out[0] == {"target": "to-a"}
    assert out[2:] == [{"target": "to-c"}, {"target": "to-d"}]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
