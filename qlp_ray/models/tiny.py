"""The built-in base model ``builtin:tiny-llama``.

A byte-level BPE tokenizer trained with ``tokenizers`` on the bundled corpus and a
small ``LlamaForCausalLM`` (~1–2 M parameters) pre-trained briefly on the same
corpus. Seeded, built once and cached under ``<home>/models/tiny-llama-<fingerprint>``;
the fingerprint covers the model config and the corpus, so a change rebuilds.
Everything runs offline on a 2-core CPU in about a minute.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from qlp_ray.core.config import QLPConfig, TinyModelConfig
from qlp_ray.models.prompt import format_prompt

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
READY_FILE = "qlp_tiny.json"

ProgressFn = Callable[[int, int, float], None]


def corpus_files() -> list[Path]:
    """Texts the tiny model learns from: train splits of the bundled samples + corpus/*.txt.

    Held-out splits are never part of the corpus.
    """
    files = sorted((DATA_DIR / "samples").glob("*.train.jsonl"))
    files += sorted((DATA_DIR / "corpus").glob("*.txt"))
    return files


def corpus_texts(files: list[Path] | None = None) -> list[str]:
    """One document per sample (prompt template + answer) or per paragraph of a .txt file."""

    texts: list[str] = []
    for path in files if files is not None else corpus_files():
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    prompt = format_prompt(rec["instruction"], rec.get("input", ""))
                    texts.append(prompt + rec["output"])
        else:
            paragraphs = path.read_text(encoding="utf-8").split("\n\n")
            texts.extend(p.strip() for p in paragraphs if p.strip())
    if not texts:
        raise FileNotFoundError(f"no corpus found under {DATA_DIR} (samples/*.train.jsonl)")
    return texts


def fingerprint(tiny: TinyModelConfig, files: list[Path] | None = None) -> str:
    """12 hex chars identifying the model config + corpus contents."""
    h = hashlib.sha256(json.dumps(tiny.model_dump(), sort_keys=True).encode())
    for path in files if files is not None else corpus_files():
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


def tiny_model_dir(cfg: QLPConfig) -> Path:
    return cfg.paths.models / f"tiny-llama-{fingerprint(cfg.model.tiny)}"


def is_built(path: Path) -> bool:
    return (path / READY_FILE).is_file()


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent builds of the same model (several processes may ask at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=4096,
    )


def _blocks(texts: list[str], tokenizer, block: int):
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def build_tiny_model(
    cfg: QLPConfig, *, force: bool = False, progress: ProgressFn | None = None
) -> Path:
    """Return the cached tiny model directory, building it first if needed."""
    out = tiny_model_dir(cfg)
    if is_built(out) and not force:
        return out
    with _build_lock(out):
        if is_built(out) and not force:  # another process built it while we waited
            return out
        _build(cfg.model.tiny, out, progress)
    return out


def _build(tiny: TinyModelConfig, out: Path, progress: ProgressFn | None) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    files = corpus_files()
    texts = corpus_texts(files)
    logger.info("building builtin:tiny-llama from %d documents into %s", len(texts), out)
    tokenizer = train_tokenizer(texts, tiny.vocab_size)

    torch.manual_seed(tiny.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_heads,
        max_position_embeddings=tiny.max_position,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    data = _blocks(texts, tokenizer, block=min(128, tiny.max_position))
    losses = _pretrain(model, data, tiny, progress)

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    meta = {
        "name": "builtin:tiny-llama",
        "fingerprint": out.name.rsplit("-", 1)[-1],
        "parameters": sum(p.numel() for p in model.parameters()),
        "documents": len(texts),
        "blocks": int(data.shape[0]),
        "pretrain_steps": tiny.pretrain_steps,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (tmp / READY_FILE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    logger.info(
        "built tiny-llama: %d params, loss %.3f -> %.3f in %.1f s",
        meta["parameters"],
        meta["loss_first"] or 0,
        meta["loss_last"] or 0,
        meta["seconds"],
    )


def _pretrain(model, data, tiny: TinyModelConfig, progress: ProgressFn | None) -> list[float]:
    import torch

    if tiny.pretrain_steps == 0:
        return []
    gen = torch.Generator().manual_seed(tiny.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=tiny.learning_rate, weight_decay=0.01)
    warmup = max(1, tiny.pretrain_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, tiny.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    for step in range(tiny.pretrain_steps):
        idx = torch.randint(0, data.shape[0], (tiny.batch_size,), generator=gen)
        batch = data[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if progress is not None:
            progress(step + 1, tiny.pretrain_steps, losses[-1])
    model.eval()
    return losses
