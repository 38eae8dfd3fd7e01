"""The Ray Serve application behind the OpenAI-compatible HTTP API.

Three deployments: the gateway (:mod:`~qlp_ray.serve.gateway`, the HTTP ingress), the
router (:mod:`~qlp_ray.serve.router`) and the compositor (:mod:`~qlp_ray.serve.compositor`:
one base model with many adapters, batching, stacks, hot-swap).
:mod:`~qlp_ray.serve.model_table` owns what a request's ``model`` string means;
:mod:`~qlp_ray.serve.app` builds, deploys and shuts down the application. Routes, auth,
errors and wire models are in :mod:`qlp_ray.serve.http`; metrics, analytics, cost and
the request log in :mod:`qlp_ray.serve.telemetry`.
"""
