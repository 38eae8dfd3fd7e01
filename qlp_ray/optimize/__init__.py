"""Model optimisation for ``qlp optimize``: INT8 quantization, dynamic or static
(:mod:`~qlp_ray.optimize.quantize`), and magnitude or structured pruning
(:mod:`~qlp_ray.optimize.prune`), each measured against the original model for size, speed
and quality in the same run (:mod:`~qlp_ray.optimize.compare`, :mod:`~qlp_ray.optimize.run`).
"""
