"""Router deployment in ``learned`` mode on real Ray Serve (the session's Serve, own app name).

A learned router is trained on a few real-looking titles and saved with safetensors + JSON;
the Router deployment loads it, embeds concurrent requests through ``@serve.batch`` and
returns calibrated decisions. The registry is empty, so every decision goes to the fallback
while the predicted domain and its scores still come from the gating + lexical model.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.helpers.ray_start import SERVE_PORT

pytestmark = pytest.mark.integration

PORT = SERVE_PORT
APP = "qlp_serve3_router"
TITLES = {
    "dataeng": [
        "Spark job fails on shuffle",
        "Airflow DAG stuck in queued",
        "dbt model slow",
        "Kafka consumer lag grows",
        "Parquet schema mismatch in Hive table",
    ],
    "devops": [
        "Helm chart upgrade fails",
        "Terraform plan shows drift",
        "Pod in CrashLoopBackOff",
        "Ansible playbook hangs on ssh",
        "Kubernetes ingress TLS certificate expired",
    ],
    "frontend": [
        "React hook runs twice",
        "CSS grid overflow on mobile",
        "Vue component not reactive",
        "Vite HMR broken after upgrade",
        "Button focus ring missing in dark mode",
    ],
}


@pytest.fixture(scope="module")
def router_handle(tmp_path_factory, ray_local):
    from ray import serve

    from qlp_ray.core.config import load_config
    from qlp_ray.route.embeddings import get_embedder
    from qlp_ray.route.learned import fit_learned_router
    from qlp_ray.serve.router import router_deployment

    os.environ["HF_HUB_OFFLINE"] = "1"
    home = tmp_path_factory.mktemp("qlp_home")
    cfg = load_config(
        overrides={
            "paths": {"home": str(home)},
            "router": {"mode": "learned", "refresh_interval_s": 60.0},
            "serve": {"port": PORT, "router_num_cpus": 0.25},
        },
        environ={},
    )
    texts = [t for ts in TITLES.values() for t in ts]
    domains = [d for d, ts in TITLES.items() for _ in ts]
    router = fit_learned_router(
        get_embedder().encode(texts),
        domains,
        [f"r{i % 5}" for i in range(len(texts))],
        texts=texts,
        lexical_buckets=1 << 14,
        calib_folds=0,
    )
    router.save(cfg.router.learned_path(cfg.paths.root))
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    handle = serve.run(
        router_deployment(cfg).bind(cfg.model_dump(mode="json")), name=APP, route_prefix=None
    )
    try:
        yield handle
    finally:
        serve.delete(APP)


def test_learned_mode_routes_concurrent_requests(router_handle):
    probes = {
        "Spark DataFrame join is slow": "dataeng",
        "Helm release rollback fails": "devops",
        "React component re-renders": "frontend",
    }
    # 24 concurrent calls: the deployment's @serve.batch groups their embeddings
    calls = [(text, router_handle.route.remote(text)) for text in list(probes) * 8]
    results = [(text, resp.result(timeout_s=120)) for text, resp in calls]
    for text, d in results:
        assert d["mode"] == "learned"
        assert d["fallback"] is True and d["target"] is None  # empty registry: no adapter
        scores = d["scores"]
        assert set(scores) == set(TITLES)
        assert max(scores, key=scores.get) == probes[text], (text, scores)
        assert np.isclose(sum(scores.values()), 1.0, atol=1e-3)
    stats = router_handle.batch_stats.remote().result(timeout_s=60)
    assert stats["texts"] >= len(calls) and stats["batches"] < stats["texts"]  # texts shared calls
    table = router_handle.table.remote().result(timeout_s=60)
    assert table["mode"] == "learned" and 0.0 <= table["threshold"] <= 1.0
