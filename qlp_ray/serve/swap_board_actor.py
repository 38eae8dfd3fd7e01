"""The swap board of one Serve application as a named Ray actor: every compositor replica
and gateway of the app, on any node, reads and writes the same board (no shared files).

The actor (``qlp-swap-board:<app>``, detached, restarted if it dies) holds a
:class:`~qlp_ray.serve.swap_board.MemorySwapBoard`; :class:`RaySwapBoard` gives it the
board's synchronous interface (callers run it in a thread, as they do the file board). A
restart loses the notices in flight: their routes time out and replicas load the new
version on first use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ray

from qlp_ray.core.config import QLPConfig
from qlp_ray.serve.swap_board import (
    Ack,
    MemorySwapBoard,
    Notice,
    SwapBoard,
    board_dir,
)

ACTOR_PREFIX = "qlp-swap-board:"
CALL_TIMEOUT_S = 30.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SwapBoardActor:
    def __init__(self, max_age_s: float) -> None:
        self.board = MemorySwapBoard(max_age_s=max_age_s)

    def post(self, kind: str, args: dict[str, Any]) -> str:
        return self.board.post(kind, **args)

    def notices(self, skip: list[str]) -> list[Notice]:
        return self.board.notices(skip)

    def ack(self, notice_id: str, ack: Ack) -> None:
        self.board.ack(notice_id, ack)

    def acks(self, notice_id: str) -> list[Ack]:
        return self.board.acks(notice_id)

    def remove(self, notice_id: str) -> None:
        self.board.remove(notice_id)

    def prune(self) -> int:
        return self.board.prune()


class RaySwapBoard:
    """The board interface over the app's board actor (get-or-create)."""

    def __init__(self, app_name: str, namespace: str, *, max_age_s: float = 600.0) -> None:
        self.name = f"{ACTOR_PREFIX}{app_name}"
        self.actor = SwapBoardActor.options(
            name=self.name, namespace=namespace, get_if_exists=True, lifetime="detached"
        ).remote(max_age_s)

    def _get(self, ref: Any) -> Any:
        return ray.get(ref, timeout=CALL_TIMEOUT_S)

    def post(self, kind: str, **args: Any) -> str:
        return self._get(self.actor.post.remote(kind, args))

    def notices(self, skip: Any = ()) -> list[Notice]:
        return self._get(self.actor.notices.remote(list(skip)))

    def ack(self, notice_id: str, ack: Ack) -> None:
        """Answer a notice, stamped with the Ray node of the answering replica."""
        if ack.node is None:
            ack = dataclasses.replace(ack, node=ray.get_runtime_context().get_node_id())
        self._get(self.actor.ack.remote(notice_id, ack))

    def acks(self, notice_id: str) -> list[Ack]:
        return self._get(self.actor.acks.remote(notice_id))

    def remove(self, notice_id: str) -> None:
        self._get(self.actor.remove.remote(notice_id))

    def prune(self) -> int:
        return self._get(self.actor.prune.remote())


def make_swap_board(cfg: QLPConfig) -> SwapBoard | RaySwapBoard:
    """The app's board as ``serve.swap_board`` says: the Ray actor, or files under the home."""
    if cfg.serve.swap_board == "files":
        return SwapBoard(board_dir(cfg.paths.root, cfg.serve.app_name))
    return RaySwapBoard(cfg.serve.app_name, cfg.hardware.namespace)


__all__ = ["RaySwapBoard", "SwapBoardActor", "make_swap_board"]
