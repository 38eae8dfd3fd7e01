"""What the gateway records about served requests: Prometheus metrics through
``ray.serve.metrics`` (:mod:`~qlp_ray.serve.telemetry.metrics`), per-adapter analytics
(:mod:`~qlp_ray.serve.telemetry.analytics`), cost and savings against an external model
(:mod:`~qlp_ray.serve.telemetry.cost`), the request log that a background writer commits
to the feedback store (:mod:`~qlp_ray.serve.telemetry.request_log`), and the per-request
hook that feeds them all (:mod:`~qlp_ray.serve.telemetry.recording`).
"""
