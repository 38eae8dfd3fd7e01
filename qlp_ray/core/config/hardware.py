"""``hardware``: the capability table the scheduler actor places workloads by (read by
``qlp_ray.hardware`` and ``actors``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from qlp_ray.core.config.base import Section

WORKLOADS = (
    "embedding",
    "vector_search",
    "inference",
    "inference_int8",
    "reranking",
    "gating",
    "training",
)
HW_DEVICE_CLASSES = ("pcore", "ecore", "cpu", "ov_cpu", "npu", "arc", "ncs2", "cuda", "xpu")


def _default_capabilities() -> dict[str, list[str]]:
    # The design card's matrix; "+avx512" requires the AVX-512 flag; CPU is the last resort.
    return {
        "embedding": ["npu", "arc", "cuda", "xpu", "pcore", "cpu", "ov_cpu", "ecore"],
        "vector_search": ["pcore+avx512", "cpu+avx512", "pcore", "cpu", "ecore"],
        "inference": ["cuda", "xpu", "arc", "npu", "pcore", "cpu", "ov_cpu"],
        "inference_int8": ["npu", "arc", "ncs2", "ov_cpu"],
        "reranking": ["ncs2", "npu", "arc", "pcore", "cpu", "ov_cpu"],
        "gating": ["arc", "npu", "pcore", "cpu", "ecore"],
        "training": ["cuda", "xpu", "pcore", "cpu"],
    }


class HardwareConfig(Section):
    capabilities: dict[str, list[str]] = Field(
        default_factory=_default_capabilities,
        description="Workload -> device classes, best first ('class' or 'class+avx512').",
    )
    busy_threshold: float = Field(
        0.9, gt=0, le=1, description="Skip a device whose utilization is above this share."
    )
    max_inflight_per_device: int = Field(
        2, ge=1, description="Workloads sent to one device at once; more wait in the queue."
    )
    max_attempts: int = Field(
        3, ge=1, description="Placements of one workload before it fails (device deaths)."
    )
    status_interval_s: float = Field(
        1.0, gt=0, description="Seconds between device status polls by the scheduler."
    )
    rediscovery_interval_s: float = Field(
        0.0, ge=0, description="Seconds between device re-discoveries (hot-plug); 0 = off."
    )
    namespace: str = Field("qlp", description="Ray namespace of the device and scheduler actors.")
    device_actors: bool = Field(
        True,
        description="When the platform starts (qlp serve, a RayService app), start a device "
        "actor for every device discovered on each node the scheduler has none of; false = "
        "the scheduler only (start them with actors.launch.start_hardware()).",
    )

    @model_validator(mode="after")
    def _known_names(self) -> HardwareConfig:
        for workload, selectors in self.capabilities.items():
            if workload not in WORKLOADS:
                raise ValueError(
                    f"`hardware.capabilities`: unknown workload {workload!r}; known: {WORKLOADS}"
                )
            for sel in selectors:
                cls, _, flag = sel.partition("+")
                if cls not in HW_DEVICE_CLASSES or flag not in ("", "avx512"):
                    raise ValueError(
                        f"`hardware.capabilities.{workload}`: bad device selector {sel!r}; "
                        f"use one of {HW_DEVICE_CLASSES}, optionally with '+avx512'"
                    )
        return self
