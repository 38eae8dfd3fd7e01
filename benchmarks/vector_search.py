"""Vector search: qlp_ray.route.vector (Cython) vs numpy (BLAS matmul + argpartition) vs faiss.

100 000 x 384 float32 unit vectors (seeded Gaussian), top-10, batches of 1 and 64
queries, all methods on the same data in one process, interleaved rounds, median time.
Also: recall@10 and speed of the compressed (float16 / int8) index vs exact.

    PYTHONPATH=. python benchmarks/vector_search.py [--rows 100000] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from qlp_ray.route import vector


def _median_ms(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="threads for every method")
    args = parser.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    th = args.threads
    if th:
        faiss.omp_set_num_threads(th)
        threadpool_limits(th, user_api="blas")

    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(data)
    indexes = {c: vector.VectorIndex(data, compression=c) for c in ("float16", "int8")}
    print(
        f"backend={vector.BACKEND} cpus={os.cpu_count()} threads={th or 'all'} faiss_threads="
        f"{faiss.omp_get_max_threads()} rows={args.rows} dim={args.dim} k={args.k} "
        f"loadavg={os.getloadavg()[0]:.1f}"
    )
    print(
        f"memory MB: float32 {data.nbytes / 1e6:.1f}, float16 "
        f"{indexes['float16'].nbytes / 1e6:.1f}, int8 {indexes['int8'].nbytes / 1e6:.1f}"
    )
    for nq in (1, 64):
        queries = rng.standard_normal((nq, args.dim), dtype=np.float32)
        exact_s, exact_i = vector._numpy_topk(queries, data, args.k, None)
        ext_s, ext_i = vector.topk(queries, data, args.k)
        _, faiss_i = flat.search(queries, args.k)
        assert np.array_equal(ext_i, exact_i), "extension disagrees with numpy"
        assert np.allclose(ext_s, exact_s, atol=1e-4)
        runs = {
            "qlp ext float32": lambda q=queries: vector.topk(q, data, args.k, threads=th),
            "numpy argpartition": lambda q=queries: vector._numpy_topk(q, data, args.k, None),
            "faiss IndexFlatIP": lambda q=queries: flat.search(q, args.k),
            "qlp ext float16": lambda q=queries: indexes["float16"].search(q, args.k, threads=th),
            "qlp ext int8": lambda q=queries: indexes["int8"].search(q, args.k, threads=th),
        }
        ms = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleave so load swings hit every method alike
            for name, fn in runs.items():
                ms[name].append(_median_ms(fn, 1))
        med = {name: statistics.median(v) for name, v in ms.items()}
        recalls = {
            "faiss IndexFlatIP": vector.recall_at_k(faiss_i, exact_i),
            "qlp ext float32": vector.recall_at_k(ext_i, exact_i),
            "qlp ext float16": vector.recall_at_k(
                indexes["float16"].search(queries, 10)[1], exact_i
            ),
            "qlp ext int8": vector.recall_at_k(indexes["int8"].search(queries, 10)[1], exact_i),
        }
        print(f"\n{nq} quer{'y' if nq == 1 else 'ies'}, top-{args.k}  (median of {args.rounds})")
        print(f"{'method':<22}{'ms':>9}{'vs numpy':>10}{'vs faiss':>10}{'recall@10':>11}")
        for name, t in med.items():
            rec = recalls.get(name)
            print(
                f"{name:<22}{t:>9.2f}{med['numpy argpartition'] / t:>9.2f}x"
                f"{med['faiss IndexFlatIP'] / t:>9.2f}x"
                f"{'' if rec is None else f'{rec:>11.3f}'}"
            )
    print("\n(ratios > 1 mean faster than the baseline)")


if __name__ == "__main__":
    main()
