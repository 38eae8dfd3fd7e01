"""SFT precision on this CPU: the same LoRA SFT run (``run_sft``, plain process) in fp32 and
in bf16 autocast; training tokens/s and held-out loss after training.

``train.precision: auto`` picks from this: bf16 only where it is faster.

    QLP_HOME=/tmp/qlp-bench PYTHONPATH=. python benchmarks/sft_precision.py --steps 60
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--domain", default="api")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from qlp_ray.core.config import load_config
    from qlp_ray.data.capsules import load_capsules, sample_path
    from qlp_ray.data.format import to_prompt_completion
    from qlp_ray.models.base import resolve_base_path
    from qlp_ray.train.sft import bf16_supported, run_sft

    torch.set_num_threads(args.threads)
    cfg = load_config()
    base = resolve_base_path(cfg)
    train = [to_prompt_completion(c) for c in load_capsules(sample_path(args.domain, "train"))]
    held = [to_prompt_completion(c) for c in load_capsules(sample_path(args.domain, "heldout"))]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 supported: {bf16_supported(True)}, {args.threads} thread(s), "
          f"{args.steps} steps, domain {args.domain}")  # fmt: skip
    print(f"{'precision':<10} {'tokens/s':>9} {'train s':>8} {'loss before':>12} {'after':>8}")
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # twice each, interleaved
        train_cfg = cfg.train.model_copy(
            update={"steps": args.steps, "precision": precision, "checkpoint_every": 0}
        )
        with tempfile.TemporaryDirectory() as tmp:
            res = run_sft(base, train, held, train_cfg, tmp,
                          max_seq_len=cfg.model.max_seq_len, save_adapter=False)  # fmt: skip
        print(f"{precision:<10} {res.tokens_per_s:9.0f} {res.seconds:8.1f} "
              f"{res.eval_loss_before:12.4f} {res.eval_loss_after:8.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
