"""A/B experiments: split one model's traffic between variants (adapters, pinned versions or
stacks) and tell which one is better.

:mod:`~qlp_ray.experiments.ab` defines experiments, assigns requests (sticky, weighted,
random, Thompson bandit) and analyses their outcomes; :mod:`~qlp_ray.experiments.runtime`
decides in the serving path which requests join and what is recorded;
:mod:`~qlp_ray.experiments.store` keeps definitions and outcomes in the feedback store.
Used by the gateway and by the improve loop. No Ray.
"""
