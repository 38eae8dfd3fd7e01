"""Token log-probabilities of a generation, in OpenAI's chat shape (``logprobs.content``).

A generated token's log-probability is the log-softmax of the model's raw logits at its
step (before temperature / top-p, as OpenAI reports them), whichever distribution it was
drawn from. Only computed for requests that ask for ``logprobs``: the default path runs no
extra softmax.
"""

from __future__ import annotations

from typing import Any

import torch


def _piece(tokenizer: Any, token: int) -> dict[str, Any]:
    text = tokenizer.decode([token], skip_special_tokens=False)
    return {"token": text, "bytes": list(text.encode("utf-8"))}


def token_entry(tokenizer: Any, logits: torch.Tensor, token: int, top_n: int) -> dict[str, Any]:
    """One generated ``token``'s entry from its step's raw ``logits`` ``[vocab]``: its
    log-probability and the ``top_n`` most likely tokens (most likely first)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    entry = {**_piece(tokenizer, token), "logprob": float(lp[token]), "top_logprobs": []}
    if top_n > 0:
        values, ids = torch.topk(lp, min(top_n, lp.shape[-1]))
        entry["top_logprobs"] = [
            {**_piece(tokenizer, int(i)), "logprob": float(v)}
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        ]
    return entry


def step_entries(
    tokenizer: Any, step_logits: list[torch.Tensor] | tuple[torch.Tensor, ...], row: int,
    tokens: list[int], top_n: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Entries of row ``row``'s ``tokens`` from ``generate``'s per-step raw logits
    (``output_logits``: one ``[rows, vocab]`` tensor a step)."""
    return [token_entry(tokenizer, step_logits[s][row], t, top_n) for s, t in enumerate(tokens)]
