"""The compositor's batching switch, outside Ray Serve: max_batch_size 1 = one at a time."""

from __future__ import annotations

import asyncio

from qlp_ray.core.config import load_config
from qlp_ray.models.backend import GenerationRequest
from qlp_ray.serve.compositor import Compositor


def _compositor(home, max_batch_size: int, *, continuous: bool = True) -> Compositor:
    cfg = load_config(
        environ={},
        overrides={
            "paths": {"home": str(home)},
            "model": {"tiny": {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}},
            "serve": {"max_batch_size": max_batch_size, "continuous_batching": continuous},
        },
    )
    return Compositor(cfg.model_dump(mode="json"))


def test_max_batch_size_1_generates_per_request_and_more_enables_batching(tmp_path):
    single = _compositor(tmp_path, 1)
    assert not single.batching and single.cache_stats()["max_batch_size"] == 1
    request = {
        "prompt": "### Instruction:\nDeploy with Helm\n\n### Response:\n",
        "max_new_tokens": 6,
    }
    out = asyncio.run(single.generate(request))
    want = single.backend.generate(GenerationRequest(**request))
    assert (out["text"], out["completion_tokens"]) == (want.text, want.completion_tokens)
    assert out["completion_tokens"] > 0 and single.cache_stats()["batching"]["batches"] == 0
    batched = _compositor(tmp_path, 4)
    assert batched.batching and batched.cache_stats()["max_batch_size"] == 4
    assert batched._merger.max_rows == 4
    out = asyncio.run(batched.generate(request))  # the same text through the batcher
    assert (out["text"], out["completion_tokens"]) == (want.text, want.completion_tokens)
    stats = batched.cache_stats()["batching"]
    assert stats["continuous"] and stats["rows"] == 1 and stats["prefills"] == 1
    # one decoding step per token after the prompt's (prefill) token
    assert stats["batches"] == out["completion_tokens"] - 1
    request_level = _compositor(tmp_path, 4, continuous=False)
    out = asyncio.run(request_level.generate(request))
    assert (out["text"], out["completion_tokens"]) == (want.text, want.completion_tokens)
    stats = request_level.cache_stats()["batching"]
    assert not stats["continuous"] and stats["batches"] == 1 and stats["rows"] == 1
