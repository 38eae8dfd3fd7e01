"""Build, deploy and shut down the qlp Serve application (gateway → router → compositor)."""

from __future__ import annotations

import logging
import time

import httpx
from ray import serve

from qlp_ray.core.config import QLPConfig, load_config, portable_config
from qlp_ray.core.errors import QLPError
from qlp_ray.core.runtime import connect_existing, ensure_ray
from qlp_ray.models.precision import planned_dtype
from qlp_ray.serve.external import check_external_pricing
from qlp_ray.serve.gateway import gateway_deployment

logger = logging.getLogger(__name__)


def build_app(cfg: QLPConfig) -> serve.Application:
    """The bound application. The config travels to every deployment as a plain dict
    without its secrets: Serve keeps init args in its controller's checkpoint, so each
    replica resolves them from its own environment or this process's secrets file
    (:mod:`qlp_ray.core.config.secrets`)."""
    from qlp_ray.serve.compositor import (
        compositor_deployment,  # lazy: loads peft, torch, transformers
    )
    from qlp_ray.serve.router import router_deployment  # lazy: loads torch

    check_external_pricing(cfg)  # a clear error here rather than a failing replica
    config = portable_config(cfg, f"serve-{cfg.serve.app_name}")
    # placement "gateway": the gateway routes in its own process (serve/local_router.py)
    router = router_deployment(cfg).bind(config) if cfg.router.placement == "deployment" else None
    compositor = compositor_deployment(cfg).bind(config)
    gateway = gateway_deployment(cfg)
    if cfg.serve.gateway_resources:  # pinned to the nodes that advertise them
        options = {"num_cpus": cfg.serve.gateway_num_cpus, "resources": cfg.serve.gateway_resources}
        gateway = gateway.options(ray_actor_options=options)
    return gateway.bind(config, router, compositor)


def app_builder(args: dict[str, str]) -> serve.Application:
    """Ray Serve application builder for ``serve run`` / RayService ``import_path``.

    ``args`` may name a YAML file (``config: path``); otherwise the defaults, ``QLP_*``
    environment variables and ``QLP_CONFIG`` apply, exactly as for the CLI. The replicas
    are placed by the scheduler as under ``qlp serve`` (:func:`placed_config`).
    """

    cfg, _ = placed_config(load_config(args.get("config") if args else None))
    return build_app(cfg)


def base_url(cfg: QLPConfig) -> str:
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    prefix = cfg.serve.route_prefix.rstrip("/")
    return f"http://{host}:{cfg.serve.port}{prefix}"


def wait_healthy(url: str, timeout_s: float) -> None:
    """Poll ``GET {url}/health`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/health", timeout=5.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise QLPError(f"the app at {url} did not become healthy in {timeout_s:.0f} s ({last})")


def placed_config(cfg: QLPConfig) -> tuple[QLPConfig, dict]:
    """``cfg`` with the CPUs per replica the scheduler gives each deployment (rule 1 of
    :mod:`qlp_ray.hardware.cpu_share`), and the scheduler's placement record; the
    compositor's device entry also says the dtype its base model computes in
    (``model.dtype`` on that device, :func:`qlp_ray.models.precision.planned_dtype`)."""
    from actors.launch import plan_serving  # lazy: starts the scheduler actor

    s = cfg.serve
    requested = {"compositor": (s.compositor_num_cpus, s.compositor_replicas)}
    if cfg.router.placement == "deployment":
        requested["router"] = (s.router_num_cpus, 1)
    if s.gateway_num_cpus:
        requested["gateway"] = (s.gateway_num_cpus, 1)
    slot = cfg.train.cpus_per_worker if s.keep_training_slot else 0.0
    workloads = {}
    if s.place_devices:
        workloads["compositor"] = ("inference", s.backend)
        if cfg.router.embedding_backend == "openvino":
            workloads["router"] = ("embedding", "openvino")
    plan = plan_serving(requested, slot, workloads, cfg.hardware)
    placed = cfg.model_copy(deep=True)
    for name, cpus in plan["cpus"].items():
        setattr(placed.serve, f"{name}_num_cpus", cpus)
    for name, device in plan["devices"].items():
        options = device["ray_options"]
        setattr(placed.serve, f"{name}_num_gpus", float(options.get("num_gpus", 0)))
        setattr(placed.serve, f"{name}_resources", dict(options.get("resources", {})))
        if name == "compositor" and s.backend == "openvino":
            placed.serve.openvino_device = device["openvino_device"]
        if name == "router":
            placed.router.embedding_device = device["openvino_device"]
        if name == "compositor":
            device["dtype"] = planned_dtype(cfg.model.dtype, device["device_class"])
        logger.info("serving placement: %s", device["reason"])
    logger.info("serving placement: %s", plan["reason"])
    return placed, plan


def deploy(cfg: QLPConfig, *, persistent: bool = True) -> str:
    """Start Serve HTTP on ``serve.host:port``, run the app, wait until healthy; returns its URL.

    The replicas reserve the CPUs the scheduler gives them (:func:`placed_config`).
    """

    ensure_ray(cfg, persistent=persistent)
    cfg, _ = placed_config(cfg)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    t0 = time.perf_counter()
    serve.run(build_app(cfg), name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix)
    url = base_url(cfg)
    try:
        wait_healthy(url, cfg.serve.health_timeout_s)
    except QLPError as exc:  # Serve keeps the HTTP options it was first started with
        raise QLPError(
            f"{exc.message}; if Serve already runs on this cluster with other HTTP options, "
            "run `qlp shutdown` first"
        ) from exc
    logger.info("app %r serving at %s (%.1f s)", cfg.serve.app_name, url, time.perf_counter() - t0)
    return url


def shutdown(cfg: QLPConfig) -> bool:
    """Delete the app; stop Serve when no other application is left. False if none ran."""

    if not connect_existing(cfg):
        return False
    apps = serve.status().applications
    if cfg.serve.app_name not in apps:
        return False
    serve.delete(cfg.serve.app_name)
    if not set(serve.status().applications) - {cfg.serve.app_name}:
        serve.shutdown()
    from actors.launch import release_placement  # lazy: the scheduler actor

    release_placement("serve", cfg.hardware)
    return True
