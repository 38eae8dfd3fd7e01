"""The compositor streams the openvino backend token by token, outside Ray Serve: the
deltas add up to the unstreamed text, with the same finish reason and token counts."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("openvino_genai")

from qlp_ray.core.config import load_config  # noqa: E402
from qlp_ray.models.openvino_backend import OpenVINOBackend  # noqa: E402
from qlp_ray.serve.compositor import Compositor  # noqa: E402


def test_openvino_backend_streams_token_by_token(tmp_path):
    cfg = load_config(
        environ={},
        overrides={
            "paths": {"home": str(tmp_path)},
            "model": {"tiny": {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}},
            "serve": {"backend": "openvino"},
        },
    )
    compositor = Compositor(cfg.model_dump(mode="json"))
    assert isinstance(compositor.backend, OpenVINOBackend)
    # the exported IR is cached under the home's models
    assert compositor.backend.base_ir.parent == cfg.paths.models / "openvino-ir"

    async def run(request: dict) -> tuple[list[dict], dict]:
        events = [event async for event in compositor.generate_stream(dict(request))]
        return events, await compositor.generate(dict(request))

    prompt = "### Instruction:\nDeploy with Helm\n\n### Response:\n"
    for request in (
        {"prompt": prompt, "max_new_tokens": 16},
        {"prompt": prompt, "max_new_tokens": 16, "stop": [" the"]},
    ):
        events, whole = asyncio.run(run(request))
        final = events[-1]
        assert "".join(e["text"] for e in events) == whole["text"]
        assert (final["finish_reason"], final["completion_tokens"]) == (
            whole["finish_reason"],
            whole["completion_tokens"],
        )
        if not request.get("stop"):
            # token by token: more than the one final event a non-streaming backend sends
            assert len(events) > 2 and whole["completion_tokens"] == 16
