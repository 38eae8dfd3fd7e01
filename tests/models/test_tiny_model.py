"""The built-in tiny Llama: builds from the bundled corpus, caches, generates, is seeded."""

from __future__ import annotations

import json

import pytest

from qlp_ray.core.config import load_config
from qlp_ray.models import tiny
from qlp_ray.models.base import base_model_id, load_base, resolve_base_path
from tests.helpers.tiny_lm import SMALL_BUILTIN


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    home = tmp_path_factory.mktemp("tiny_home")
    return load_config(
        environ={},
        overrides={
            "paths": {"home": str(home)},
            "model": {"tiny": SMALL_BUILTIN},
        },
    )


def test_default_size_is_one_to_five_million_parameters():
    from transformers import LlamaConfig, LlamaForCausalLM

    t = load_config(environ={}).model.tiny
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_heads,
            tie_word_embeddings=True,
        )
    )
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 <= n <= 5e6, n


def test_corpus_excludes_heldout_splits():
    names = [p.name for p in tiny.corpus_files()]
    assert names and all(".heldout." not in n for n in names)
    assert {n.split(".")[0] for n in names} >= {"dataeng", "devops", "api", "frontend", "ml"}


def test_build_cache_and_generate(small_cfg):
    steps = []
    path = tiny.build_tiny_model(small_cfg, progress=lambda s, n, loss: steps.append(loss))
    meta = json.loads((path / tiny.READY_FILE).read_text())
    assert len(steps) == 40
    assert meta["loss_last"] < meta["loss_first"] - 1.0  # pre-training really learned something
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert not list(path.glob("*.bin")), "no pickle weights"

    # second call reuses the cache (no progress callbacks, same directory)
    again = []
    assert tiny.build_tiny_model(small_cfg, progress=lambda *a: again.append(a)) == path
    assert again == []
    assert resolve_base_path(small_cfg) == str(path)
    assert base_model_id(small_cfg).startswith("builtin:tiny-llama@")

    model, tok = load_base(small_cfg)
    ids = tok("### Instruction:\nDeploy with Helm\n\n### Response:\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert tok.decode(out[0]).startswith("### Instruction:")  # the tokenizer round-trips text


def test_fingerprint_tracks_config(small_cfg):
    other = small_cfg.model.tiny.model_copy(update={"seed": 1})
    assert tiny.fingerprint(other) != tiny.fingerprint(small_cfg.model.tiny)
    assert tiny.fingerprint(small_cfg.model.tiny) == tiny.fingerprint(small_cfg.model.tiny)
