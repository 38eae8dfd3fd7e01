"""``qlp train --init meta`` on the session Ray cluster: a new domain's SFT run starts from
the registry's meta-learned LoRA init.

Two source-domain adapters (devops, frontend; a few in-process LoRA steps on the bundled
samples, signed and registered with their data hash) make the meta-init computable; the
Reptile pass itself runs in-process (2 rounds of 2 steps). One Ray Train run
(6 steps on 16 ml examples). AdaLoRA's meta-init is checked in-process (no Ray Train run).
"""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from qlp_ray import cli
from qlp_ray.core.config import load_config
from qlp_ray.data.capsules import file_sha256, load_capsules, sample_path
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.registry import Registry

pytestmark = pytest.mark.integration

runner = CliRunner()
RUN = uuid.uuid4().hex[:6]  # fresh adapter ids: QLP_TEST_HOME may be reused
SOURCES = ("devops", "frontend")


def _texts(domain: str, n: int) -> list[str]:
    pcs = [to_prompt_completion(c) for c in load_capsules(sample_path(domain, "train"))[:n]]
    return [p["prompt"] + p["completion"] for p in pcs]


@pytest.fixture(scope="module")
def home(qlp_home, ray_session, tmp_path_factory):
    """The session home with two signed source-domain adapters (retired afterwards)."""
    import random

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.models.base import base_model_id, resolve_base_path
    from qlp_ray.train.meta_init import adapt
    from qlp_ray.train.peft_setup import build_peft_config
    from qlp_ray.train.sft import save_adapter_dir

    mp = pytest.MonkeyPatch()
    mp.setenv("QLP_HOME", str(qlp_home))
    mp.setenv("QLP_TRAIN__CPUS_PER_WORKER", "0.5")
    for key, value in (
        ("ROUNDS", "2"),
        ("INNER_STEPS", "2"),
        ("BATCH_SIZE", "4"),
        ("MAX_TEXTS_PER_DOMAIN", "32"),
    ):  # a few seconds of Reptile
        mp.setenv(f"QLP_TRAIN__META_INIT__{key}", value)
    for console in (cli.console, cli.err_console):  # no wrapping inside asserted messages
        mp.setattr(console, "_width", 400)
    cfg = load_config()
    registry = Registry(cfg)
    base_path = resolve_base_path(cfg)
    tok = AutoTokenizer.from_pretrained(base_path)
    ids = []
    for domain in SOURCES:
        torch.manual_seed(0)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
            build_peft_config(cfg.train, 4),
        )
        adapt(model, tok, _texts(domain, 16), steps=2, lr=5e-3, batch_size=8, max_length=128,
              rng=random.Random(0))  # fmt: skip
        src = save_adapter_dir(model, tmp_path_factory.mktemp(domain) / "adapter")
        data = sample_path(domain, "train")
        rec = registry.register(
            src, adapter_id=f"{domain}-src-{RUN}", domain=domain, base_model=base_model_id(cfg),
            metadata={"method": "lora", "kind": "adapter", "data_hash": file_sha256(data),
                      "data_file": data.name},
        )  # fmt: skip
        ids.append(rec.adapter_id)
    data_dir = cfg.paths.root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    shots = data_dir / f"meta-ml-16-{RUN}.jsonl"
    rows = [c.model_dump() for c in load_capsules(sample_path("ml", "train"))[:16]]
    shots.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield {"cfg": cfg, "shots": shots, "ids": ids}
    for adapter_id in ids + [f"ml-meta-{RUN}"]:
        if registry.storage.versions(adapter_id):
            registry.retire(adapter_id, reason="test done")
    mp.undo()


def test_qlp_train_init_meta_starts_from_the_signed_meta_init(home):
    from safetensors.torch import load_file

    from qlp_ray.train.meta_entry import META_INIT_ID, ensure_meta_init
    from qlp_ray.train.meta_init import state_digest

    cfg = home["cfg"]
    adapter_id = f"ml-meta-{RUN}"
    cli.state._config = None
    result = runner.invoke(cli.app, [
        "train", "--domain", "ml", "--data", str(home["shots"]),
        "--heldout", str(sample_path("ml", "heldout")), "--steps", "6", "--init", "meta",
        "--adapter-id", adapter_id,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output

    registry = Registry(cfg)
    trained = registry.verify(adapter_id)
    info = json.loads((trained.path / "qlp.json").read_text())
    assert info["init"] == "meta" and info["method"] == "lora"
    ref = info["meta_init"]
    assert ref["adapter_id"] == META_INIT_ID and ref["requested"] == "meta"
    assert f"started from meta-init {META_INIT_ID} v{ref['version']}" in result.output

    # the meta-init entry: signed, verifies, lineage names the source domains and data
    meta = registry.verify(META_INIT_ID, ref["version"])
    assert meta.signed and meta.domain == "meta"
    lineage = meta.metadata
    assert lineage["kind"] == "meta_init" and lineage["method"] == "reptile"
    assert lineage["reptile"]["rounds"] == 2 and all(lineage["texts"][d] == 32 for d in SOURCES)
    sources = {(s["domain"], s["data_hash"]) for s in lineage["sources"]}
    for domain in SOURCES:
        assert (domain, file_sha256(sample_path(domain, "train"))) in sources
    assert "ml" not in {d for d, _ in sources}  # the new domain is not a source
    weights = meta.path / "adapter_model.safetensors"
    assert ref["weights_sha256"] == file_sha256(weights)

    # the run's starting weights were the meta-init's (the worker's digest after loading),
    # not PEFT's init, whose lora_B is zero
    state = load_file(str(weights))
    assert ref["state_sha256"] == state_digest(state)
    assert all(float(t.abs().max()) > 0 for k, t in state.items() if "lora_B" in k)

    m = info["metrics"]
    assert m["steps"] == 6
    assert m["eval_loss_after"] < m["eval_loss_before"], m

    # the same inputs again: the registered version is reused, nothing is computed
    versions = registry.storage.versions(META_INIT_ID)
    again = ensure_meta_init(cfg, cfg.train, "ml")
    assert (again.version, again.created) == (ref["version"], False)
    assert registry.storage.versions(META_INIT_ID) == versions
    # and a named meta-init resolves to it; an adapter is not one
    from qlp_ray.core.errors import InvalidRequest
    from qlp_ray.train.meta_entry import init_for_run

    named = init_for_run(cfg, f"{META_INIT_ID}@{ref['version']}", cfg.train, "ml")
    assert named is not None and named.weights_sha256 == ref["weights_sha256"]
    with pytest.raises(InvalidRequest, match="not a meta-init"):
        init_for_run(cfg, home["ids"][0], cfg.train, "ml")


def test_adalora_meta_init_loads_into_an_adalora_sft_trainer(home, tmp_path):
    """AdaLoRA: the meta-init has AdaLoRA's tensors (A, B, E) and loads exactly (no Ray)."""
    from qlp_ray.models.base import resolve_base_path
    from qlp_ray.train.meta_entry import compute_meta_init
    from qlp_ray.train.meta_init import apply_init, state_digest
    from qlp_ray.train.sft import build_sft_trainer, load_sft_model

    cfg = home["cfg"]
    rounds = cfg.train.meta_init.model_copy(update={"rounds": 1, "inner_steps": 1})
    tc = cfg.train.model_copy(update={"method": "adalora", "steps": 12, "meta_init": rounds})
    texts = {d: _texts(d, 16) for d in SOURCES}
    compute_meta_init(cfg, tc, texts, tmp_path / "meta")
    weights = tmp_path / "meta" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(weights))
    assert any("lora_E" in k for k in state)
    model, tok = load_sft_model(resolve_base_path(cfg), tc)
    records = [to_prompt_completion(c) for c in load_capsules(sample_path("ml", "train"))[:8]]
    trainer, _ = build_sft_trainer(model, tok, records, records[:2], tc, tmp_path / "t",
                                   max_seq_len=128)  # fmt: skip
    loaded = apply_init(trainer.model, weights, file_sha256(weights))
    assert loaded == state_digest(state)
