"""The HTTP surface of the gateway: one routes module per feature (compositor admin, routing
table, experiments, improve loop, Ray jobs), API-key checks (:mod:`~qlp_ray.serve.http.auth`),
OpenAI-shaped errors (:mod:`~qlp_ray.serve.http.errors`) and the pydantic wire models
(:mod:`~qlp_ray.serve.http.protocol`). The completion routes are methods of the gateway
deployment (:mod:`qlp_ray.serve.gateway`).
"""
