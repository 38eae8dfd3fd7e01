"""ContinuousDecoder: rows join a running batch at any step and leave when done."""

from __future__ import annotations

import asyncio
import time

import pytest

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.models.backend import AdapterNotLoaded, GenerationRequest
from qlp_ray.serve.batching import StepMerger
from tests.models.test_hf_backend_batch import PROMPTS, _same, backend  # noqa: F401 - fixture
from tests.models.test_serve_backend import tokenizer  # noqa: F401 - fixture


def _drain(decoder, joins: dict[int, list]) -> dict:
    """Run steps; at step ``k`` admit ``joins[k]``; results by key."""
    results: dict = {}
    step = 0
    while step <= max(joins) or len(decoder):
        for key, result in decoder.admit(joins.get(step, [])):
            results[key] = result
        for key, result in decoder.step():
            results[key] = result
        step += 1
    return results


def test_rows_joining_at_different_steps_get_what_they_get_alone(backend):  # noqa: F811
    adapters = ["first", "second", None, "wide"]
    items = [
        (
            GenerationRequest(PROMPTS[i % 4], max_new_tokens=(3, 9, 12, 1)[i % 4]),
            adapters[(i + i // 4) % 4],
        )
        for i in range(12)
    ]
    alone = [backend.generate(r, a) for r, a in items]
    stop = alone[6].text[2:4]
    items[6] = (GenerationRequest(items[6][0].prompt, max_new_tokens=12, stop=(stop,)), items[6][1])
    alone[6] = backend.generate(*items[6])
    assert alone[6].finish_reason == "stop"
    decoder = backend.continuous_decoder()
    joins = {0: [], 2: [], 5: []}
    for i, (request, adapter) in enumerate(items):  # three waves joining a running batch
        joins[(0, 2, 5)[i % 3]].append((request, adapter, i))
    got = _drain(decoder, joins)
    assert sorted(got) == list(range(len(items)))
    for i, want in enumerate(alone):
        _same(got[i], want)
    assert len(decoder) == 0 and decoder._cache is None


def test_a_bad_row_fails_alone(backend):  # noqa: F811
    decoder = backend.continuous_decoder()
    items = [
        (GenerationRequest(PROMPTS[0], max_new_tokens=4), "first", "ok"),
        (GenerationRequest("word " * 70, max_new_tokens=4), "second", "long"),
        (GenerationRequest(PROMPTS[1], max_new_tokens=4), "not-loaded", "missing"),
    ]
    got = _drain(decoder, {0: items})
    assert isinstance(got["long"], InvalidRequest) and "context length" in str(got["long"])
    assert isinstance(got["missing"], AdapterNotLoaded)
    _same(got["ok"], backend.generate(items[0][0], "first"))


def test_plain_lora_rows_greedy_or_sampled_are_continuous(backend):  # noqa: F811
    assert backend.continuous_ok(GenerationRequest("x"), "first")
    assert backend.continuous_ok(GenerationRequest("x"), None)
    assert backend.continuous_ok(GenerationRequest("x", temperature=0.7), "first")
    assert not backend.continuous_ok(GenerationRequest("x"), "not-loaded")


def test_sampled_rows_keep_their_seeded_sample_whatever_runs_beside_them(backend):  # noqa: F811
    seeded = GenerationRequest(PROMPTS[0], max_new_tokens=8, temperature=1.0, seed=5)
    alone = _drain(backend.continuous_decoder(), {0: [(seeded, "first", "s")]})["s"]
    others = [(GenerationRequest(PROMPTS[i], max_new_tokens=6), a, i)
              for i, a in ((1, "second"), (2, None))]  # fmt: skip
    mixed = _drain(backend.continuous_decoder(), {0: others, 2: [(seeded, "first", "s")]})
    assert mixed["s"].text == alone.text and mixed["s"].completion_tokens == 8
    for request, adapter, key in others:  # the greedy rows beside it are unchanged
        _same(mixed[key], backend.generate(request, adapter))
    # another seed, another sample (over 8 tokens of a 30k vocabulary)
    other = GenerationRequest(PROMPTS[0], max_new_tokens=8, temperature=1.0, seed=6)
    assert _drain(backend.continuous_decoder(), {0: [(other, "first", "o")]})["o"].text != (
        alone.text
    )
    # top_p so small only the likeliest token is left: sampling is greedy decoding
    narrow = GenerationRequest(PROMPTS[1], max_new_tokens=6, temperature=1.0, top_p=1e-9)
    got = _drain(backend.continuous_decoder(), {0: [(narrow, "second", "n")]})["n"]
    _same(got, backend.generate(GenerationRequest(PROMPTS[1], max_new_tokens=6), "second"))


def test_step_merger_a_short_request_does_not_wait_for_a_long_one(backend):  # noqa: F811
    merger = StepMerger(backend, max_rows=3)
    long = (GenerationRequest(PROMPTS[2], max_new_tokens=40), "wide")
    short = [(GenerationRequest(PROMPTS[i], max_new_tokens=2), "first") for i in range(3)]
    sampled = (GenerationRequest(PROMPTS[1], max_new_tokens=3, temperature=0.8, seed=3), "second")
    finished: list[str] = []

    async def run(name, row):
        (result,) = await merger.submit([row])
        finished.append(name)
        return result

    async def main():
        first = asyncio.create_task(run("long", long))
        while merger.stats["batches"] < 3:  # the long row is decoding
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(run(f"short{i}", r)) for i, r in enumerate(short)]
        rest.append(asyncio.create_task(run("sampled", sampled)))
        return await first, [await t for t in rest]

    t0 = time.perf_counter()
    got_long, got_rest = asyncio.run(main())
    wall = time.perf_counter() - t0
    assert finished[-1] == "long"  # every later, shorter request finished before it
    _same(got_long, backend.generate(*long))
    for got, row in zip(got_rest[:-1], short, strict=True):
        _same(got, backend.generate(*row))
    # the sampled row ran in the decoder too: its seed gives its sample there
    (sampled_alone,) = asyncio.run(StepMerger(backend, max_rows=3).submit([sampled]))
    assert got_rest[-1].text == sampled_alone.text
    assert merger.stats["largest"] == 3  # max_rows: the long row + 2 short ones at most
    assert merger.stats["rows"] == 5 and merger.most_adapters == 3  # the sampled row too
    # the decoder's busy time: prefills and decoding steps, both measured, within the run
    st = merger.stats
    assert st["prefills"] >= 2 and st["prefill_s"] > 0 and st["step_s"] > 0
    assert st["prefill_s"] + st["step_s"] < wall


def test_step_merger_streams_tokens_as_steps_decode_them(backend):  # noqa: F811
    merger = StepMerger(backend, max_rows=4)
    row = (GenerationRequest(PROMPTS[0], max_new_tokens=6), "first")
    sampled = (GenerationRequest(PROMPTS[1], max_new_tokens=3, temperature=0.8, seed=1), None)

    async def collect(request, adapter):
        items, steps_seen = [], []
        async for item in merger.stream(request, adapter):
            items.append(item)
            steps_seen.append(merger.stats["batches"])
        return items, steps_seen

    (items, steps_seen), (only, _) = asyncio.run(_both(collect(*row), collect(*sampled)))
    *tokens, gen = items
    want = backend.generate(*row)
    _same(gen, want)
    assert len(tokens) == want.completion_tokens  # every token, one by one
    assert steps_seen[:-1] == sorted(steps_seen[:-1]) and steps_seen[0] < steps_seen[-2]
    assert backend.tokenizer.decode(tokens, skip_special_tokens=True).startswith(want.text)
    # a sampled row streams token by token too
    *sampled_tokens, sampled_gen = only
    assert len(sampled_tokens) == sampled_gen.completion_tokens >= 1


async def _both(a, b):
    return await asyncio.gather(a, b)


def test_a_caller_that_goes_away_frees_its_row_at_the_next_step(backend):  # noqa: F811
    merger = StepMerger(backend, max_rows=2)
    long = (GenerationRequest(PROMPTS[1], max_new_tokens=45), "wide")

    async def main():
        stream = merger.stream(*long)
        first = [await anext(stream) for _ in range(2)]
        await stream.aclose()  # the streaming client disconnected
        while merger.running:
            await asyncio.sleep(0.001)
        streamed_steps = merger.stats["batches"]
        # a unary caller cancelled mid-generation (its HTTP client went away) too
        task = asyncio.ensure_future(merger.submit([long]))
        while merger.running == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        while merger.running:
            await asyncio.sleep(0.001)
        return first, streamed_steps

    first, streamed_steps = asyncio.run(main())
    assert all(isinstance(t, int) for t in first)
    assert merger.stats["cancelled"] == 2
    assert streamed_steps < 10  # dropped right away, not decoded to its 45 tokens
    assert merger.stats["batches"] < 25


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
