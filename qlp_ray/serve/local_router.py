"""Routing inside the gateway process (``router.placement: gateway``): no deployment hop.

A ``model=auto`` request normally costs a gateway → Router deployment call on top of the
embedding itself; on a busy machine that hop (two processes to schedule, a Ray call each
way) costs as much as the embedding. With ``placement: gateway`` the gateway builds the
same :class:`~qlp_ray.serve.router.RouterDeployment` in its own process and calls it
through :class:`InProcessRouter`, which has the deployment handle's call shape
(``await router.route.remote(text)``), so the gateway and its admin routes run the same
code for both placements. The encoder then runs in a worker thread so the gateway's event
loop keeps serving other requests; ``@serve.batch`` still groups concurrent texts.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


class _LocalMethod:
    """``method.remote(*args)`` → an awaitable, like a deployment handle method."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Future:
        result = self._fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return asyncio.ensure_future(result)
        done = asyncio.get_running_loop().create_future()
        done.set_result(result)
        return done


class InProcessRouter:
    """A router living in this process behind the deployment-handle call shape."""

    def __init__(self, config: dict[str, Any]) -> None:
        from qlp_ray.serve.router import RouterDeployment  # lazy: loads ray, torch

        self.router = RouterDeployment(config, encode_in_thread=True)

    def __getattr__(self, name: str) -> _LocalMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self.router, name)
        if not callable(attr):
            raise AttributeError(f"router attribute {name!r} is not a method")
        return _LocalMethod(attr)


__all__ = ["InProcessRouter"]
