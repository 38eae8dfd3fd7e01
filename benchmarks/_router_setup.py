"""Shared setup of the router benchmarks: five signed adapters with real routing centroids.

One adapter per domain of the bundled samples (api, dataeng, devops, frontend, ml): a real
PEFT LoRA adapter on the built-in tiny base, registered and Ed25519-signed, whose
``centroid`` is the MiniLM mean embedding of that domain's bundled training instructions
(what ``qlp train`` stores). The request texts are the real GitHub issue titles of
``shared/data/routing/dev.jsonl``: distinct texts, so no cache could inflate a figure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from _compositor_setup import bench_config, save_random_adapters

SAMPLES = Path(__file__).resolve().parent.parent / "qlp_ray" / "data" / "samples"
DEV_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing" / "dev.jsonl"
DOMAINS = ("api", "dataeng", "devops", "frontend", "ml")
PORT = 8200


def add_encoder_args(parser: Any) -> None:
    """``--backend`` and ``--precision`` of the router's encoder (both router benchmarks)."""
    parser.add_argument("--backend", choices=("openvino", "torch"), default="openvino")
    parser.add_argument("--precision", choices=("auto", "f32", "bf16"), default="auto")


def encoder_label(backend: str, precision: str) -> str:
    """``openvino/bf16``: the backend and the precision ``auto`` resolved to."""
    if backend == "openvino":
        from qlp_ray.route.openvino_embedder import resolve_precision

        precision = resolve_precision(precision)
    return f"{backend}/{precision}"


def dev_titles(path: Path | None = None) -> list[str]:
    """The distinct issue titles of the routing dev set, in file order."""
    src = path or Path(os.environ.get("QLP_ROUTING_DEV", "/work/shared/data/routing/dev.jsonl"))
    if not src.is_file():
        src = DEV_DATA
    seen: dict[str, None] = {}
    for line in src.read_text().splitlines():
        if line.strip():
            seen.setdefault(json.loads(line)["text"].strip(), None)
    return list(seen)


def domain_instructions(domain: str) -> list[str]:
    rows = (SAMPLES / f"{domain}.train.jsonl").read_text().splitlines()
    return [json.loads(r)["instruction"] for r in rows if r.strip()]


def router_bench_config(home: Path, router: dict[str, Any] | None = None) -> Any:
    """Bench config: port 8200, the given ``router`` overrides, nothing else changed."""
    cfg = bench_config(home, serve={"port": PORT, "compositor_num_cpus": 0.5})
    if router:
        cfg = cfg.model_copy(update={"router": cfg.router.model_copy(update=router)})
    return cfg


def build_registry(cfg: Any) -> list[str]:
    """Fresh registry under ``cfg.paths.root`` with one routable adapter per domain."""
    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry
    from qlp_ray.train.pipeline import training_centroid

    registry_dir = Path(cfg.registry_uri)
    if registry_dir.exists():
        shutil.rmtree(registry_dir)
    if not cfg.paths.keys.exists():
        init_keys(cfg.paths.keys)
    base, _ = load_base(cfg)
    src = cfg.paths.root / "bench_src"
    outs = save_random_adapters(base, [src / d for d in DOMAINS])
    registry = Registry(cfg)
    for domain, out in zip(DOMAINS, outs, strict=True):
        registry.register(
            out,
            adapter_id=f"{domain}-router-bench",
            domain=domain,
            base_model=base_model_id(cfg),
            metadata={"centroid": training_centroid(cfg, domain_instructions(domain))},
        )
    shutil.rmtree(src)
    return [f"{d}-router-bench" for d in DOMAINS]


def embedding_ms(calls: int = 60) -> float:
    """Median milliseconds of one router embedding (the per-request work a budget is
    measured against), after a warm-up."""
    import statistics
    import time

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from qlp_ray.route.embeddings import get_embedder

    embedder = get_embedder()
    titles = [
        "Spark job fails with OOM on large shuffle",
        "Helm chart upgrade breaks ingress",
        "FastAPI dependency injection with async DB session",
        "Vite HMR not working",
    ]
    for t in titles:
        embedder.encode(t)  # warm up
    lat = []
    for i in range(calls):
        t0 = time.perf_counter()
        embedder.encode(titles[i % len(titles)])
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1000
