"""Adapter stacks without Ray: parsing, combination rules, LRU+TTL cache, PEFT numerics."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from qlp_ray.core.errors import AdapterNotFound, InvalidRequest
from qlp_ray.models.backend import GenerationRequest
from qlp_ray.models.composition import (
    AdapterStack,
    StackMember,
    choose_combination,
    is_stack,
    parse_stack,
)
from qlp_ray.models.composition_cache import CompositionCache
from qlp_ray.models.hf_backend import TransformersBackend
from qlp_ray.serve.composition import StackComposer
from tests.helpers.tiny_lm import save_random_lora

# -- parsing ----------------------------------------------------------------------------


def test_parse_stack_defaults_weights_versions_and_canonical_key():
    stack = parse_stack("dataeng+frontend@3:0.25+ml:-0.5")
    assert stack.members == (
        StackMember("dataeng", None, 1.0),
        StackMember("frontend", 3, 0.25),
        StackMember("ml", None, -0.5),
    )
    assert not stack.resolved
    pinned = stack.with_versions({"dataeng": 2, "frontend": 9, "ml": 1})
    assert pinned.resolved and pinned.key == "dataeng@2:1+frontend@3:0.25+ml@1:-0.5"
    assert parse_stack(pinned.key) == pinned  # the key parses back to the same stack
    assert pinned.contains("frontend", 3) and not pinned.contains("frontend", 9)
    assert pinned.replace_version("ml", 1, 2).key.endswith("ml@2:-0.5")
    assert is_stack("a+b") and is_stack("a:0.5") and not is_stack("a") and not is_stack("a@2")


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("a++b", "empty member"),
        ("a+", "empty member"),
        ("a+a", "appears twice"),
        ("a:x+b", "not a number"),
        ("a:nan+b", "non-finite"),
        ("a@0+b", "bad version"),
        ("a@v2+b", "bad version"),
        ("Bad_ID+b", "not a valid adapter id"),
        ("a+b+c+d+e", "at most 4"),
    ],
)
def test_parse_stack_rejects_bad_stacks_naming_the_problem(model, problem):
    with pytest.raises(InvalidRequest, match=problem) as info:
        parse_stack(model, max_members=4)
    assert info.value.http_status == 400 and info.value.param == "model"


def test_choose_combination_follows_peft_rank_rules():
    assert choose_combination("linear", {"a": 4, "b": 4}, None) == ("linear", None)
    assert choose_combination("cat", {"a": 4, "b": 8}, None) == ("cat", None)
    assert choose_combination("svd", {"a": 4, "b": 8}, None) == ("svd", None)
    combo, note = choose_combination("ties", {"a": 4, "b": 8}, "svd")
    assert combo == "svd" and "a r=4, b r=8" in note
    with pytest.raises(InvalidRequest, match=r"equal LoRA ranks \(a r=4, b r=8\)"):
        choose_combination("linear", {"a": 4, "b": 8}, None)
    with pytest.raises(InvalidRequest, match="not one of"):
        choose_combination("dare", {}, None)


# -- LRU + TTL cache ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_lru_eviction_hits_misses_and_remove_callback():
    removed = []
    cache = CompositionCache(2, 60.0, on_remove=lambda k, v, why: removed.append((k, v, why)))
    assert cache.get("a") is None  # miss
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # hit; "a" is now most recently used
    cache.put("c", 3)  # full: evicts the LRU entry, "b"
    assert cache.keys() == ["a", "c"] and removed == [("b", 2, "evicted")]
    assert cache.get("b") is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"]) == (1, 2, 1)
    assert stats["hit_ratio"] == pytest.approx(1 / 3, abs=1e-4)
    assert [e["key"] for e in stats["entries"]] == ["a", "c"]
    assert cache.invalidate(lambda k: k == "a") == ["a"]
    assert removed[-1] == ("a", 1, "invalidated") and cache.stats()["invalidations"] == 1


def test_cache_ttl_expires_entries_by_the_injected_clock():
    clock = FakeClock()
    removed = []
    cache = CompositionCache(4, 10.0, on_remove=lambda k, v, why: removed.append((k, why)),
                             clock=clock)  # fmt: skip
    cache.put("a", "A")
    clock.now += 9.9
    assert cache.get("a") == "A" and "a" in cache
    clock.now += 0.1  # age == ttl: expired
    assert "a" not in cache
    assert cache.get("a") is None and removed == [("a", "expired")]
    cache.put("b", "B")
    clock.now += 5
    cache.put("c", "C")
    clock.now += 6  # b is 11 s old, c 6 s: putting d drops b as expired, not as evicted
    cache.put("d", "D")
    assert cache.keys() == ["c", "d"] and removed[-1] == ("b", "expired")
    stats = cache.stats()
    assert stats["expirations"] == 2 and stats["evictions"] == 0
    assert stats["entries"][0] == {"key": "c", "age_s": 6.0, "idle_s": 6.0, "hits": 0}


def test_cache_rejects_bad_sizes():
    with pytest.raises(ValueError, match="capacity"):
        CompositionCache(0, 1.0)
    with pytest.raises(ValueError, match="ttl_s"):
        CompositionCache(1, 0.0)


# -- composition numerics on a tiny Llama ---------------------------------------------------


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def _tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(62)} | {"[UNK]": 62, "[EOS]": 63}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]",
                                   pad_token="[EOS]")  # fmt: skip


def _save_adapter(base, out: Path, seed: int, r: int = 4) -> Path:
    return save_random_lora(base, out, seed, r=r, alpha=8)


@pytest.fixture(scope="module")
def composer_setup(tmp_path_factory):
    base = _tiny_llama()
    root = tmp_path_factory.mktemp("stack_adapters")
    paths = {
        ("a", 1): _save_adapter(base, root / "a1", 1),
        ("b", 1): _save_adapter(base, root / "b1", 2),
        ("c", 1): _save_adapter(base, root / "c1", 3, r=8),
    }

    def resolve(adapter_id: str, version: int | None) -> Path:
        if (adapter_id, version) not in paths:
            raise AdapterNotFound(f"unknown adapter {adapter_id!r}")
        return paths[(adapter_id, version)]

    backend = TransformersBackend(base, _tokenizer())
    return backend, resolve, paths


def _logits(backend: TransformersBackend, adapter: str) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    peft = backend.peft_model
    peft.set_adapter(adapter)
    with torch.inference_mode():
        return peft(input_ids=ids).logits


def test_linear_stack_with_weights_1_0_equals_the_first_adapter(composer_setup):
    backend, resolve, paths = composer_setup
    composer = StackComposer(backend, resolve, combination="linear", fallback=None)
    backend.load_adapter("a-alone", str(paths[("a", 1)]))
    backend.load_adapter("b-alone", str(paths[("b", 1)]))
    lease = composer.get(parse_stack("a@1:1+b@1:0"))
    composed = _logits(backend, lease.name)
    assert torch.allclose(composed, _logits(backend, "a-alone"), atol=1e-5)
    # and it is not trivially the base model or the other adapter
    assert not torch.allclose(composed, _logits(backend, "b-alone"), atol=1e-3)
    with backend.peft_model.disable_adapter(), torch.inference_mode():
        base_logits = backend.peft_model(input_ids=torch.tensor([[1, 5, 9, 13, 2, 7]])).logits
    assert not torch.allclose(composed, base_logits, atol=1e-3)
    # members were loaded under temporary names and unloaded again
    assert sorted(backend.loaded_adapters) == sorted(["a-alone", "b-alone", lease.name])
    # a cached stack is served without composing again
    assert composer.get(parse_stack("a@1:1+b@1:0")) is lease and composer.compositions == 1
    gen = composer.generate(parse_stack("a@1:1+b@1:0"), GenerationRequest("w1 w2", 3))
    assert gen.extra["stack"] == "a@1:1+b@1:0" and gen.completion_tokens >= 1
    stats = composer.stats()
    assert stats["hits"] == 2 and stats["misses"] == 1 and stats["compositions"] == 1
    for name in ("a-alone", "b-alone"):
        backend.unload_adapter(name)
    composer.cache.clear()
    assert lease.name not in backend.loaded_adapters  # invalidation freed the PEFT adapter


def test_cat_stack_equals_the_sum_of_the_deltas(composer_setup):
    backend, resolve, paths = composer_setup
    composer = StackComposer(backend, resolve, combination="cat", fallback=None)
    lease = composer.get(parse_stack("a@1:1+c@1:1"))  # ranks 4 and 8: fine for cat
    backend.load_adapter("a-ref", str(paths[("a", 1)]))
    backend.load_adapter("c-ref", str(paths[("c", 1)]))
    layers = [m for m in backend.peft_model.modules() if lease.name in getattr(m, "r", {})]
    assert len(layers) == 4  # q_proj and v_proj of two layers
    for module in layers:
        assert module.r[lease.name] == 12
        expected = module.get_delta_weight("a-ref") + module.get_delta_weight("c-ref")
        assert torch.allclose(module.get_delta_weight(lease.name), expected, atol=1e-5)
    for name in ("a-ref", "c-ref"):
        backend.unload_adapter(name)
    composer.cache.clear()


def test_unequal_ranks_fall_back_or_give_a_clear_400(composer_setup):
    backend, resolve, _ = composer_setup
    strict = StackComposer(backend, resolve, combination="linear", fallback=None)
    before = set(backend.loaded_adapters)
    with pytest.raises(InvalidRequest, match=r"a@1 r=4, c@1 r=8"):
        strict.get(parse_stack("a@1+c@1"))
    assert set(backend.loaded_adapters) == before  # nothing left behind
    lenient = StackComposer(backend, resolve, combination="linear", fallback="cat")
    lenient.get(parse_stack("a@1+c@1"))
    assert "used cat" in lenient.stats()["fallbacks"]["a@1:1+c@1:1"]
    lenient.cache.clear()


def test_unknown_member_is_not_found_and_loads_nothing(composer_setup):
    backend, resolve, _ = composer_setup
    composer = StackComposer(backend, resolve)
    before = set(backend.loaded_adapters)
    with pytest.raises(AdapterNotFound, match="'zz'"):
        composer.get(parse_stack("a@1+zz@1"))
    with pytest.raises(InvalidRequest, match="without a version"):
        composer.get(AdapterStack((StackMember("a"),)))
    assert set(backend.loaded_adapters) == before


def test_a_swapped_out_version_is_served_but_not_cached_again(composer_setup):
    """A request resolved before a hot-swap composes its old stack after the swap dropped
    it: it is served, not cached, and freed when the request lets go of it."""
    import gc

    backend, resolve, _ = composer_setup
    composer = StackComposer(backend, resolve, combination="cat", fallback=None)
    old = parse_stack("a@1+b@1")
    first = composer.get(old)
    assert composer.invalidate("a", 1, current=2) == [old.key]  # the swap a@1 -> a@2
    assert first.name not in backend.loaded_adapters
    late = composer.get(old)  # the in-flight request composes it again
    with late.use() as name:
        assert backend.generate(GenerationRequest("w1 w2", 2), name).completion_tokens >= 1
    assert old.key not in composer.cache.keys() and name in backend.loaded_adapters
    del late
    gc.collect()
    assert name not in backend.loaded_adapters  # freed once nothing holds it
    assert composer.get(parse_stack("b@1")).name in backend.loaded_adapters  # others cache
    # swapping back (a@2 -> a@1) makes v1 cacheable again
    composer.invalidate("a", 2, current=1)
    again = composer.get(old)
    assert composer.cache.keys() == ["b@1:1", old.key] and composer.get(old) is again
    composer.cache.clear()


def test_fast_adapter_switch_generates_like_a_dedicated_peft_model(composer_setup):
    """The backend's O(layers) adapter switch = PEFT's own set_adapter, in any order."""
    from peft import PeftModel

    backend, _, paths = composer_setup
    names = {"a": "sw-a", "b": "sw-b", "c": "sw-c"}
    for key, name in names.items():
        backend.load_adapter(name, str(paths[(key, 1)]))
    request = GenerationRequest("w3 w4 w5", 6)
    reference = {}
    for key in names:
        model = PeftModel.from_pretrained(copy.deepcopy(_tiny_llama()), str(paths[(key, 1)]))
        ref_backend = TransformersBackend(model.merge_and_unload(), _tokenizer())
        reference[key] = ref_backend.generate(request).text
    assert len(set(reference.values())) == 3  # the adapters really differ
    for key in ["a", "b", "a", "a", "c", "b"]:
        assert backend.generate(request, names[key]).text == reference[key]
    assert (
        backend.generate(request, None).text
        == TransformersBackend(_tiny_llama(), _tokenizer()).generate(request).text
    )
    for name in names.values():
        backend.unload_adapter(name)


def test_prefetch_queue_runs_highest_priority_first_and_reports_failures():
    import asyncio

    from qlp_ray.serve.composition import PrefetchQueue

    order = []

    async def load(model_id: str) -> None:
        if model_id == "broken":
            raise AdapterNotFound("unknown adapter 'broken'")
        order.append(model_id)

    async def scenario() -> dict:
        queue = PrefetchQueue(load)
        queue.submit(["low-1", "low-2", "broken"], priority=0)
        queue.submit(["urgent"], priority=9)  # queued before the worker first runs
        await queue.join(5.0)
        return queue.stats()

    stats = asyncio.run(scenario())
    assert order == ["urgent", "low-1", "low-2"]
    assert (stats["submitted"], stats["done"], stats["failed"], stats["pending"]) == (4, 3, 1, 0)
    failed = [e for e in stats["recent"] if e["status"] == "failed"]
    assert failed == [
        {"model": "broken", "priority": 0, "status": "failed",
         "error": "unknown adapter 'broken'", "ms": failed[0]["ms"]}
    ]  # fmt: skip


@pytest.mark.parametrize("combination", ["linear", "cat", "svd", "ties"])
def test_every_configured_combination_composes_and_generates(composer_setup, combination):
    backend, resolve, _ = composer_setup
    composer = StackComposer(backend, resolve, combination=combination, fallback=None)
    stack = parse_stack("a@1:0.7+b@1:0.3")
    gen = composer.generate(stack, GenerationRequest("w1 w2 w3", 4))
    assert gen.completion_tokens >= 1 and gen.extra["stack"] == stack.key
    name = composer.get(stack).name
    ranks = {m.r[name] for m in backend.peft_model.modules() if name in getattr(m, "r", {})}
    assert ranks == ({8} if combination == "cat" else {4})  # cat concatenates the ranks
    composer.cache.clear()
    assert name not in backend.loaded_adapters
