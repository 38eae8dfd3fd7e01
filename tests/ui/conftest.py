"""What the UI's page tests share: the platform (real routes on a real HTTP server, no Ray;
one per test package run) and small ``AppTest`` helpers."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from qlp_ray.core.config import REPO_ROOT
from qlp_ray.ui import APP_PATH
from tests.helpers.tiny_lm import save_random_lora, tiny_serve_setup
from tests.ui.api_server import free_port, serving

VIEWS = APP_PATH.parent / "views"
ADMIN_KEY = "admin-secret"
SAMPLES = REPO_ROOT / "qlp_ray" / "data" / "samples"
ROW = {"instruction": "Paginate GET /orders with a cursor", "input": "",
       "output": "Return next_cursor and accept ?cursor=.", "domain": "api"}  # fmt: skip


@pytest.fixture(scope="package")
def platform(tmp_path_factory):
    """Config (built-in tiny base, keys), registry with two signed versions of `api`, URL."""
    home = tmp_path_factory.mktemp("ui_home")
    cfg, registry, base = tiny_serve_setup(home, {"api_key": "user-key", "admin_key": ADMIN_KEY})
    cfg.jobs.dashboard_address = f"http://127.0.0.1:{free_port()}"  # no Jobs API: 503
    for seed in (1, 2):
        adapter = save_random_lora(base, home / f"lora{seed}", seed)
        registry.register(adapter, adapter_id="api", domain="api", base_model=registry_base(cfg),
                          metadata={"method": "lora", "metrics": {"tokens_per_s": 1000.0 * seed,
                                    "eval_loss_before": 3.0, "eval_loss_after": 2.5},
                                    "run": {"run_name": f"run-{seed}"}})  # fmt: skip
    with serving(cfg) as url:
        yield {"cfg": cfg, "registry": registry, "url": url, "base": base, "home": home}


def registry_base(cfg) -> str:
    from qlp_ray.models.base import base_model_id

    return base_model_id(cfg)


def page(name: str, url: str, key: str = ADMIN_KEY, **state) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    at.session_state["gateway_url"] = url
    at.session_state["api_key"] = key
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def click(at: AppTest, label: str) -> AppTest:
    [button] = [b for b in at.button if b.label == label]
    return button.click().run()
