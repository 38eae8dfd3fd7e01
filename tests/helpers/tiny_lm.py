"""A seeded random tiny Llama + a byte-level BPE tokenizer trained on a few lines.

Used by the evaluation/training/optimisation tests so they run in seconds and
offline. (The platform's pre-trained built-in model lives in
``qlp_ray.models.tiny``; these tests only need *a* causal LM.)
"""

from __future__ import annotations

from typing import Any

CORPUS = [
    "the pipeline loads the table and writes parquet files",
    "deploy the service with docker and check the health endpoint",
    "the api returns json with a status code and a message",
    "render the button component and update the state",
    "train the model with a learning rate and evaluate the loss",
    "answer yes or no to the question about the data",
    "the cat sat on the mat and the dog sat on the rug",
    "good answers are short clear and correct",
] * 4


NOUNS = ["service", "table", "model", "api", "button", "pipeline", "cluster", "file"]
VERBS = ["deploys", "loads", "trains", "returns", "renders", "writes", "checks"]
ADJS = ["new", "old", "fast", "big", "small"]


def grammar_texts(n: int = 120, seed: int = 0) -> list[str]:
    """Sentences of one tiny grammar: 'the ADJ NOUN VERB the NOUN'. Disjoint slices
    share the distribution, so held-out measurements generalise."""
    import random

    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        adj, noun, verb, obj = (rng.choice(x) for x in (ADJS, NOUNS, VERBS, NOUNS))
        out.add(f"the {adj} {noun} {verb} the {obj}")
    return sorted(sorted(out), key=lambda _: rng.random())  # a set iterates by string hash


def make_tokenizer(vocab_size: int = 300) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS + [" ".join(NOUNS + VERBS + ADJS)] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.padding_side = "right"
    return fast


def make_model(tokenizer: Any, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def pretrain(
    model: Any,
    tokenizer: Any,
    *,
    steps: int = 60,
    lr: float = 1e-2,
    seed: int = 0,
    texts: list[str] | None = None,
) -> Any:
    """A few full-parameter LM steps on CORPUS so outputs look like corpus text
    (a random model's next-token distribution is near uniform, which starves RL of signal)."""
    import torch

    torch.manual_seed(seed)
    texts = texts or sorted(set(CORPUS))
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def save_random_lora(
    base: Any,
    out: Any,
    seed: int,
    *,
    r: int = 4,
    alpha: int | None = None,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    b_std: float = 1.0,
    **lora_kwargs: Any,
) -> Any:
    """A real PEFT LoRA adapter on a copy of ``base`` with random (non-zero) A and B of
    scale ``b_std`` (so it visibly changes the output), saved as safetensors to ``out``."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha,
                     target_modules=list(targets), init_lora_weights=False,
                     **lora_kwargs)  # fmt: skip
    model = get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    model.save_pretrained(str(out))
    return out


TINY_BASE = {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}  # built-in, seconds


def tiny_serve_setup(home: Any, serve: dict[str, Any]) -> tuple[Any, Any, Any]:
    """An app's config on the platform's built-in tiny base model (``TINY_BASE``) under
    ``home`` with the ``serve`` settings, its signing keys and an empty registry; returns
    ``(cfg, registry, base model)``."""
    import os

    from qlp_ray.core.config import load_config
    from qlp_ray.models.base import load_base
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry

    os.environ["HF_HUB_OFFLINE"] = "1"
    overrides = {"paths": {"home": str(home)}, "model": {"tiny": TINY_BASE}, "serve": serve}
    cfg = load_config(overrides=overrides, environ={})
    base, _ = load_base(cfg)
    init_keys(cfg.paths.keys)
    return cfg, Registry(cfg), base


# `model.tiny` of a built-in model smaller than the default: it builds in seconds
SMALL_BUILTIN = {
    "num_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "pretrain_steps": 40,
    "vocab_size": 1024,
}
