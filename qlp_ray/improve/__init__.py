"""The improve loop: turn production feedback into better adapters.

One cycle (:mod:`~qlp_ray.improve.orchestrator`) mines feedback into examples
(:mod:`~qlp_ray.improve.feedback_data`), trains a candidate adapter, checks it on held-out
data (:mod:`~qlp_ray.improve.heldout`), signs and registers it, runs an A/B experiment and
promotes it or keeps production. The decisions are pure functions
(:mod:`~qlp_ray.improve.decisions`); the real trainer, evaluator and traffic splitter sit
behind small protocols (:mod:`~qlp_ray.improve.engines`). ``qlp improve`` runs a cycle
once or as a restartable Ray actor (:mod:`actors.orchestrator`).
"""
