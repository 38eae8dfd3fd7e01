"""Models and inference: load the base model (or build ``builtin:tiny-llama``) and generate
with many LoRA adapters on it.

Inference engines sit behind one protocol (:mod:`~qlp_ray.models.backend`): transformers +
PEFT (:mod:`~qlp_ray.models.hf_backend`), OpenVINO and vLLM. Serving speed comes from
mixed-adapter batches (:mod:`~qlp_ray.models.batched_lora`), continuous batching
(:mod:`~qlp_ray.models.continuous`) and the lean Llama forward
(:mod:`~qlp_ray.models.lean_llama`, :mod:`~qlp_ray.models.lean_decoder`). Adapter stacks
and their cache are in :mod:`~qlp_ray.models.composition` and
:mod:`~qlp_ray.models.composition_cache`; the prompt template in
:mod:`~qlp_ray.models.prompt`. No Ray.
"""
