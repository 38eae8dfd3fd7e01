"""Routing-table building and adapter leases (LRU eviction semantics), without Ray."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from qlp_ray.core.errors import SignatureError
from qlp_ray.models.backend import AdapterNotLoaded, Generation, GenerationRequest, InferenceBackend
from qlp_ray.route.centroid import CentroidRouter
from qlp_ray.serve.composition import AdapterLease
from qlp_ray.serve.router import build_route_table


@dataclass
class Rec:
    adapter_id: str
    domain: str
    version: int
    metadata: dict = field(default_factory=dict)


def _unit(dim: int, i: int) -> list[float]:
    v = np.zeros(dim)
    v[i] = 1.0
    return v.tolist()


def test_route_table_keeps_only_verified_adapters_with_valid_centroids():
    records = [
        Rec("sql", "dataeng", 2, {"centroid": _unit(4, 0)}),
        Rec("css", "frontend", 1, {"centroid": [0.0, 3.0, 0.0, 0.0]}),  # normalised
        Rec("nocentroid", "ml", 1),
        Rec("short", "api", 1, {"centroid": [1.0, 0.0]}),
        Rec("zero", "api", 1, {"centroid": [0.0] * 4}),
        Rec("tampered", "devops", 3, {"centroid": _unit(4, 2)}),
    ]
    verified = []

    def verify(adapter_id: str, version: int) -> None:
        verified.append((adapter_id, version))
        if adapter_id == "tampered":
            raise SignatureError("file adapter_model.safetensors changed")

    table = build_route_table(records, verify, dim=4)
    assert [e.adapter_id for e in table.entries] == ["sql", "css"]
    assert table.versions == {"sql": 2, "css": 1}
    assert set(table.skipped) == {"nocentroid", "short", "zero", "tampered"}
    assert "adapter_model.safetensors changed" in table.skipped["tampered"]
    assert ("tampered", 3) in verified
    router = CentroidRouter(table.entries, threshold=0.5)
    d = router.route(np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32))
    assert d.target == "css" and d.confidence == pytest.approx(1.0)
    assert router.route(np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)).fallback


class RecordingBackend(InferenceBackend):
    """Just enough backend to observe when a lease frees its adapter."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.unloads: list[str] = []

    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        raise NotImplementedError

    def load_adapter(self, name: str, path: str) -> None:
        self.loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        self.unloads.append(name)
        self.loaded.discard(name)

    @property
    def loaded_adapters(self) -> list[str]:
        return sorted(self.loaded)


def test_eviction_of_an_idle_lease_unloads_once():
    backend = RecordingBackend()
    lease = AdapterLease(backend, "dataeng@2")
    backend.load_adapter(lease.name, "/x")
    assert lease.name.startswith("dataeng_2-")
    lease.__del__()  # what Serve's LRU does on eviction
    lease.__del__()  # and the garbage collector later
    assert backend.unloads == [lease.name] and backend.loaded_adapters == []
    with pytest.raises(AdapterNotLoaded), lease.use():
        pass


def test_eviction_while_in_use_waits_for_the_request():
    backend = RecordingBackend()
    lease = AdapterLease(backend, "css@1")
    backend.load_adapter(lease.name, "/x")
    with lease.use() as name:
        evictor = threading.Thread(target=lease.__del__)
        evictor.start()
        evictor.join()
        assert name in backend.loaded_adapters and backend.unloads == []
    assert backend.unloads == [lease.name]


def test_reloading_the_same_id_gets_a_new_backend_name():
    backend = RecordingBackend()
    old, new = AdapterLease(backend, "api@1"), AdapterLease(backend, "api@1")
    assert old.name != new.name
    backend.load_adapter(old.name, "/x")
    backend.load_adapter(new.name, "/x")
    old.__del__()
    assert backend.loaded_adapters == [new.name]
