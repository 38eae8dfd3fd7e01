"""What a request's ``model`` means: the one place that parses and resolves it.

A request names one of::

    auto                          the router picks an adapter, a stack or the fallback
    <base model id>               the base model, no adapter
    dataeng                       an adapter at its current version
    dataeng@2                     a pinned version
    dataeng:0.7+frontend@1:0.3    a stack composed by the compositor (see
                                  :mod:`qlp_ray.models.composition` for the grammar)

:class:`ModelTable` turns that string into a :class:`Target` (adapter, version, how it
was chosen) against the gateway's table of registered adapters, a cached listing of the
registry refreshed when the registry's generation changes or after a few seconds. The
admin routes (prefetch, swap, experiments) resolve and switch through the same table, so
a swap changes the registry pointer and the table together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from qlp_ray.core.errors import AdapterNotFound, InvalidRequest
from qlp_ray.models.composition import (
    AdapterStack,
    is_stack,
    multiplex_id,
    parse_multiplex_id,
    parse_stack,
)
from qlp_ray.registry.generation import GenerationWatch
from qlp_ray.registry.store import refusal
from qlp_ray.serve.http.errors import unwrap
from qlp_ray.serve.http.protocol import AUTO_MODEL

_ADAPTER_LIST_TTL_S = 5.0


class Target:
    """Where one request goes, and how it was chosen."""

    experiment: str | None = None  # set when an A/B experiment assigned the request
    variant: str | None = None

    def __init__(
        self,
        adapter: str | None,
        version: int | None = None,
        domain: str | None = None,
        confidence: float | None = None,
        routed: bool = False,
    ) -> None:
        self.adapter, self.version, self.domain = adapter, version, domain
        self.confidence, self.routed = confidence, routed
        self.external: str | None = None  # the external model, when it served the request

    @property
    def multiplex_id(self) -> str | None:
        """The compositor's multiplexed model id (None: the base model)."""
        return None if self.adapter is None else multiplex_id(self.adapter, self.version)


def resolve_stack(stack: AdapterStack, model: str, records: dict[str, Any]) -> AdapterStack:
    """``stack`` with unversioned members pinned to their current version.

    ``AdapterNotFound`` (404) names the first member that is not registered.
    """
    for m in stack.members:
        if m.adapter_id not in records:
            raise AdapterNotFound(
                f"stack {model!r}: adapter {m.adapter_id!r} does not exist; "
                "GET /v1/models lists the adapters",
                param="model",
            )
    return stack.with_versions({k: int(r.version) for k, r in records.items()})


class ModelTable:
    """The gateway's adapter table and the resolution of ``model`` strings against it."""

    def __init__(
        self, registry: Any, base_model: str, router: Any, *, max_stack_size: int, poll_s: float
    ) -> None:
        self.registry = registry
        self.base_model = base_model
        self.router = router  # a Router deployment handle or the in-process router
        self.max_stack_size = max_stack_size
        self._records: dict[str, Any] = {}
        self._listed_at = 0.0
        self._watch = GenerationWatch(registry.generation, poll_s)

    async def adapters(self, *, fresh: bool = False) -> dict[str, Any]:
        """Registered adapters by id (cached for a few seconds; listing hashes files)."""
        stale = time.monotonic() - self._listed_at > _ADAPTER_LIST_TTL_S
        if fresh or stale or await self._watch.changed_async():
            self._watch.commit(await asyncio.to_thread(self._watch.snapshot))
            records = await asyncio.to_thread(self.registry.list)
            self._records = {r.adapter_id: r for r in records}
            self._listed_at = time.monotonic()
        return self._records

    async def records_for(self, ids: list[str]) -> dict[str, Any]:
        """The table, re-listed when one of ``ids`` is not in it."""
        known = await self.adapters()
        if any(i not in known for i in ids):
            known = await self.adapters(fresh=True)
        return known

    def switch(self, adapter_id: str, record: Any) -> None:
        """Serve ``record`` for ``adapter_id`` from now on (a hot-swap's switch)."""
        self._records = {**self._records, adapter_id: record}
        self._listed_at = time.monotonic()

    async def resolve(self, model: str, routing_text: str) -> Target:
        """The target of a request for ``model`` (``routing_text`` feeds ``auto``)."""
        if model == AUTO_MODEL:
            try:
                d = await self.router.route.remote(routing_text)
            except Exception as exc:
                raise unwrap(exc) from None
            return Target(d["target"], d["version"], d["domain"], d["confidence"], True)
        if model == self.base_model:
            return Target(None)
        if is_stack(model):  # composed by the compositor under its canonical id
            return Target(await self.stack_key(model))
        if "@" in model:  # a pinned version: retirement, rollbacks and revoked keys apply
            adapter_id, version = parse_multiplex_id(model)
            record = await asyncio.to_thread(self.registry.servable, adapter_id, version)
            return Target(adapter_id, int(record.version), record.domain)
        record = (await self.records_for([model])).get(model)
        if record is None:
            raise AdapterNotFound(
                f"model {model!r} does not exist; GET /v1/models lists the models", param="model"
            )
        if not record.signed and self.registry.cfg.registry.require_signature:
            # e.g. its signing key was revoked since it was loaded: refused at every request
            raise refusal(record)
        return Target(record.adapter_id, int(record.version), record.domain)

    async def record_of(self, model: str) -> Any:
        """The registry record of an adapter id (its current version) or ``adapter@version``;
        ``AdapterNotFound`` (404) for anything else, stacks included (they are not listed)."""
        missing = AdapterNotFound(
            f"model {model!r} does not exist; GET /v1/models lists the models", param="model"
        )
        if is_stack(model):
            raise missing
        try:
            adapter_id, version = parse_multiplex_id(model)
        except InvalidRequest:
            raise missing from None
        record = (await self.records_for([adapter_id])).get(adapter_id)
        if record is None:
            raise missing
        if version is not None and version != int(record.version):  # 404 naming the versions
            record = await asyncio.to_thread(self.registry.get, adapter_id, version)
        return record

    async def stack_key(self, model: str) -> str:
        """The canonical, versioned id of the stack ``model`` (what the compositor serves)."""
        stack = parse_stack(model, max_members=self.max_stack_size)
        records = await self.records_for([m.adapter_id for m in stack.members])
        return resolve_stack(stack, model, records).key

    async def versioned_id(self, model: str, param: str = "models") -> str:
        """``adapter@version`` (current version unless named) or a resolved stack id."""
        if is_stack(model):
            return await self.stack_key(model)
        adapter_id, version = parse_multiplex_id(model)
        record = (await self.records_for([adapter_id])).get(adapter_id)
        if record is None:
            raise AdapterNotFound(f"adapter {adapter_id!r} does not exist", param=param)
        if version is not None:  # 404 naming the versions when it does not exist
            await asyncio.to_thread(self.registry.get, adapter_id, version)
        return multiplex_id(adapter_id, version if version is not None else int(record.version))


__all__ = ["AUTO_MODEL", "ModelTable", "Target", "resolve_stack"]
