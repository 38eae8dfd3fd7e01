"""Signed, versioned adapter registry: storage, manifests, Ed25519 signing, verification."""

from qlp_ray.registry.local import LocalStorage, open_storage
from qlp_ray.registry.storage import AdapterStorage
from qlp_ray.registry.store import Registry, validate_adapter_id
from qlp_ray.registry.verify import AdapterRecord

__all__ = [
    "AdapterRecord",
    "AdapterStorage",
    "LocalStorage",
    "Registry",
    "open_storage",
    "validate_adapter_id",
]
