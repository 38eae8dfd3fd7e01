"""The bottom layer, which every other package may import: the typed configuration
(:mod:`~qlp_ray.core.config`), the error hierarchy (:mod:`~qlp_ray.core.errors`), where
the shipped ``configs/`` files are (:mod:`~qlp_ray.core.paths`), getting a Ray cluster to
run on (:mod:`~qlp_ray.core.runtime`), long operations as Ray jobs
(:mod:`~qlp_ray.core.jobs`) and JSONL reading. It imports no other qlp_ray package.
"""
