"""A small trained causal LM + tokenizer for the hardware tests (seconds to build, offline)."""

from __future__ import annotations

from pathlib import Path

TRAIN_TEXTS = [
    "def load_table(path): read the parquet file and return a data frame.",
    "kubectl get pods shows the pods of the namespace and their status.",
    "The API returns a JSON body with the order id and the total price.",
    "Train the model for three epochs and evaluate it on the held out split.",
    "The build pipeline runs the tests, builds the image and pushes it.",
    "Render the list of items as a table with a header and a footer.",
    "Join the events with the users table on the user id column.",
    "Scale the deployment to three replicas behind the load balancer.",
]


def build_small_lm(out: Path, *, steps: int = 40, seed: int = 0) -> Path:
    """Train a tokenizer and a 2-layer Llama on ``TRAIN_TEXTS``; save both to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlp_ray.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(TRAIN_TEXTS * 4, 400)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    batch = tokenizer(TRAIN_TEXTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
