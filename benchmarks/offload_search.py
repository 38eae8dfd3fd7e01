"""Per-request vector search in the router's process vs on a device actor (``router.offload``).

One claim: a routed request's search (one query) costs far less in process than the Ray
call that would move it to a device actor, so ``router.offload: auto`` keeps it in process
and sends only batch work to the devices. On a local Ray cluster (2 CPUs) it starts the
scheduler actor and one torch CPU device actor (``actors.launch`` / ``actors.fleet``, as
``start_hardware`` would), then times, interleaved per round, one unit query against

* the centroid table of the router (``--adapters`` rows; what centroid mode searches) and
* a kNN table of ``--keys`` labelled rows (what a ``knn`` head searches),

four ways: numpy in process (``q @ M.T`` + argsort, as the router does), the Cython
``vector.topk`` in process, a direct call of the device actor's ``run``, and the offload
path (``DeviceOffload.search``: the scheduler places a ``vector_search`` workload). It also
times the batch case the devices get: embedding ``--texts`` titles in process vs through
the scheduler (``DeviceOffload.embed``, chunks of 256), on the same CPU here.

    PYTHONPATH=. python benchmarks/offload_search.py [--rounds 200] [--keys 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import percentile  # noqa: E402

from actors.fleet import start_device_actor  # noqa: E402
from actors.launch import start_scheduler  # noqa: E402
from actors.offload import DeviceOffload  # noqa: E402
from qlp_ray.core.config import HardwareConfig  # noqa: E402
from qlp_ray.hardware.discovery import Device  # noqa: E402
from qlp_ray.route import vector  # noqa: E402
from qlp_ray.route.embeddings import get_embedder  # noqa: E402

NAMESPACE = "qlp_offload_bench"
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing" / "dev.jsonl"


def _unit(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _titles(n: int) -> list[str]:
    import json

    rows = [json.loads(x)["text"] for x in DEV.read_text().splitlines()] if DEV.is_file() else []
    rows = rows or [f"deploy service {i} behind the load balancer" for i in range(178)]
    return [f"{rows[i % len(rows)]} #{i}" for i in range(n)]  # distinct texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--adapters", type=int, default=5)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--embed-rounds", type=int, default=3)
    args = parser.parse_args()

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE,
             log_to_driver=False)  # fmt: skip
    cfg = HardwareConfig(namespace=NAMESPACE)
    scheduler = start_scheduler(cfg)
    node = ray.get_runtime_context().get_node_id()
    actor = start_device_actor(Device("cpu", "cpu", "torch", "cpu"), node, cfg)
    while not ray.get(scheduler.devices.remote()):
        time.sleep(0.1)
    offload = DeviceOffload("always", cfg)
    rng = np.random.default_rng(0)
    query = _unit(rng, 1)
    print(f"one query, {args.rounds} interleaved rounds; ms p50 / p95")
    for label, matrix in (
        ("centroids", _unit(rng, args.adapters)),
        ("knn keys", _unit(rng, args.keys)),
    ):
        k = min(10, len(matrix))
        payload = {"queries": query, "matrix": matrix, "k": k}
        ways = {
            "numpy in process": lambda m=matrix, k=k: np.argsort(-(query @ m.T), axis=1)[:, :k],
            "cython in process": lambda m=matrix, k=k: vector.topk(query, m, k),
            "device actor, direct": lambda p=payload: ray.get(actor.run.remote("vector_search", p)),
            "device actor, via scheduler": lambda m=matrix, k=k: offload.search(
                query, m, k, lambda q: q @ m.T
            ),
        }
        times = {name: [] for name in ways}
        for fn in ways.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in ways.items():
                times[name].append(_time(fn))
        base = statistics.median(times["numpy in process"])
        print(f"\n{label}: {len(matrix)} x 384, top-{k}")
        for name, t in times.items():
            p50 = statistics.median(t)
            print(f"  {name:28s} {p50:8.3f} / {percentile(t, 95):8.3f}   x{p50 / base:7.1f}")
    assert offload.counts["process"] == 0, "a search fell back to the process"

    texts = _titles(args.texts)
    embedder = get_embedder()
    embedder.encode(texts[:8])
    offload.embed(texts[:8], embedder.encode)  # the device loads its model
    here, there = [], []
    for r in range(args.embed_rounds):
        batch = [f"{t} r{r}" for t in texts]
        here.append(_time(lambda b=batch: embedder.encode(b)))
        there.append(_time(lambda b=batch: offload.embed(b, embedder.encode)))
    print(f"\nbatch embedding of {len(texts)} titles, median of {args.embed_rounds} rounds (s):"
          f" in process {statistics.median(here) / 1e3:.2f}, on the device actor via the "
          f"scheduler {statistics.median(there) / 1e3:.2f}")  # fmt: skip
    for h in ray.util.list_named_actors(all_namespaces=True):
        if h["namespace"] == NAMESPACE:
            ray.kill(ray.get_actor(h["name"], namespace=NAMESPACE), no_restart=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
