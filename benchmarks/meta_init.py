"""Meta-init vs random init on a held-out domain with 16 examples: held-out loss after the
same LoRA steps from a Reptile meta-learned init (``qlp_ray.train.meta_init``, over the other
bundled domains) and from PEFT's default init, on the built-in tiny model; prints the ratio.

    QLP_HOME=/tmp/qlp-bench PYTHONPATH=. python benchmarks/meta_init.py --heldout-domain ml
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout-domain", default="ml")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="steps on the new domain")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--rounds", type=int, default=24, help="Reptile rounds")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.core.config import DOMAINS, load_config
    from qlp_ray.data.capsules import load_capsules, sample_path
    from qlp_ray.data.format import to_prompt_completion
    from qlp_ray.models.base import resolve_base_path
    from qlp_ray.train.meta_init import (
        ReptileOptions,
        adapt,
        heldout_loss,
        load_state,
        lora_model,
        reptile_init,
        trainable_state,
    )

    torch.set_num_threads(1)

    def texts(domain: str, part: str) -> list[str]:
        pcs = [to_prompt_completion(c) for c in load_capsules(sample_path(domain, part))]
        return [p["prompt"] + p["completion"] for p in pcs]

    base_path = resolve_base_path(load_config())
    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    meta_domains = {d: texts(d, "train") for d in DOMAINS if d != args.heldout_domain}
    new_train, new_held = texts(args.heldout_domain, "train"), texts(args.heldout_domain, "heldout")
    print(f"held-out domain {args.heldout_domain}: {args.shots} examples, {args.steps} steps at "
          f"lr {args.lr}; meta-init: Reptile over {sorted(meta_domains)}, {args.rounds} rounds; "
          f"held-out loss on {len(new_held)} texts; {args.seeds} seeds")  # fmt: skip
    print(f"{'seed':>4} {'base':>7} {'random→':>8} {'meta0':>7} {'meta→':>7} {'ratio':>6}")
    ratios = []
    for seed in range(args.seeds):
        model = lora_model(copy.deepcopy(base), seed=seed)
        random_init = trainable_state(model)
        t0 = time.perf_counter()
        meta = reptile_init(model, tok, meta_domains, ReptileOptions(rounds=args.rounds, seed=seed))
        meta_s = time.perf_counter() - t0
        shots = random.Random(seed).sample(new_train, args.shots)
        out = {}
        for name, state in (("random", random_init), ("meta", meta)):
            load_state(model, state)
            before = heldout_loss(model, tok, new_held)
            adapt(model, tok, shots, steps=args.steps, lr=args.lr, batch_size=8, max_length=128,
                  rng=random.Random(seed))  # fmt: skip
            out[name] = (before, heldout_loss(model, tok, new_held))
        ratio = out["meta"][1] / out["random"][1]
        ratios.append(ratio)
        print(f"{seed:>4} {out['random'][0]:7.4f} {out['random'][1]:8.4f} {out['meta'][0]:7.4f} "
              f"{out['meta'][1]:7.4f} {ratio:6.3f}   (meta-learning {meta_s:.0f} s)")  # fmt: skip
    print(
        f"mean ratio meta/random held-out loss after {args.steps} steps: "
        f"{sum(ratios) / len(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
