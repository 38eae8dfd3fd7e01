"""Claim: checking the registry's generation marker on the request path is cheap.

The router notices register / promote / retire by re-reading one small marker file
(``Registry.generation``) instead of re-listing the registry (``Registry.list``, which
verifies every adapter's signature and file hashes). This script registers N real signed
adapters in a throw-away registry and times both side by side, printing the ratio.

    python benchmarks/registry_change_check.py [--adapters 10] [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    from qlp_ray.core.config import load_config
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry

    with tempfile.TemporaryDirectory(prefix="qlp-gen-bench-") as tmp:
        home = Path(tmp)
        cfg = load_config(overrides={"paths": {"home": str(home)}}, environ={})
        init_keys(cfg.paths.keys)
        registry = Registry(cfg, audit=None)
        g = torch.Generator().manual_seed(0)
        for i in range(args.adapters):  # LoRA-shaped weights of a 7B-ish q_proj, rank 8
            src = home / "src" / f"a{i}"
            src.mkdir(parents=True)
            tensors = {
                f"layers.{k}.q_proj.lora_A.weight": torch.randn(8, 1024, generator=g)
                for k in range(4)
            }
            save_file(tensors, str(src / "adapter_model.safetensors"))
            (src / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
            registry.register(src, adapter_id=f"a{i}", domain=f"d{i}", base_model="base")

        marker = _timed(registry.generation, args.repeat)
        listing = _timed(registry.list, max(args.repeat // 20, 5))
    m, s = statistics.median(marker), statistics.median(listing)
    print(f"adapters: {args.adapters}")
    print(f"generation marker read: p50 {m * 1e6:8.1f} us  (n={len(marker)})")
    print(f"full registry listing:  p50 {s * 1e6:8.1f} us  (n={len(listing)})")
    print(f"ratio listing / marker: {s / m:.0f}x")


if __name__ == "__main__":
    main()
