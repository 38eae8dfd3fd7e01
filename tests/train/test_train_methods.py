"""Every non-SFT method through ``qlp train --method`` on the session Ray cluster, and one
through the REST fine-tuning job route: each ends as a signed registry entry with its
lineage (method, parent, dataset SHA-256) and a held-out metric that moved the right way.

(sft / adalora / qlora runs: tests/train/test_train_ray.py, test_train_qlora.py; their
dispatch: tests/train/test_methods_table.py.) One Ray Train run per method, 4 steps each.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp_ray import cli
from qlp_ray.core.config import load_config
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.capsules import file_sha256, load_capsules, sample_path
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.registry import Registry

pytestmark = pytest.mark.integration

runner = CliRunner()
RUN = uuid.uuid4().hex[:6]  # fresh adapter ids: QLP_TEST_HOME may be reused
OFF_TOPIC = [
    "the cat sat on the mat and the dog sat on the rug",
    "sat on the mat the cat",
    "the dog and the rug and the mat",
    "cat cat dog dog mat rug",
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(part: str, n: int) -> list[dict]:
    """API prompt -> its own answer (chosen) vs an off-topic line (rejected)."""
    out = []
    for i, c in enumerate(load_capsules(sample_path("api", part))[:n]):
        pc = to_prompt_completion(c)
        out.append(
            {"prompt": pc["prompt"], "chosen": pc["completion"], "rejected": OFF_TOPIC[i % 4]}
        )
    return out


def _prompts(part: str, n: int) -> list[dict]:
    return [
        {"prompt": to_prompt_completion(c)["prompt"]}
        for c in load_capsules(sample_path("api", part))[:n]
    ]


@pytest.fixture(scope="module")
def home(qlp_home, ray_session, tmp_path_factory):
    """The session home (tiny model, keys), the CLI pointed at it, the data files, and a
    parent adapter (a few in-process LoRA SFT steps, signed and registered as api-parent)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.models.base import base_model_id, resolve_base_path

    mp = pytest.MonkeyPatch()
    mp.setenv("QLP_HOME", str(qlp_home))
    mp.setenv("QLP_TRAIN__CPUS_PER_WORKER", "0.5")
    mp.setenv("QLP_TRAIN__CHECKPOINT_EVERY", "2")  # train.checkpoint_every: save_steps of TRL
    for console in (cli.console, cli.err_console):  # no wrapping inside asserted messages
        mp.setattr(console, "_width", 400)
    cfg = load_config()
    data = cfg.paths.root / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = {
        "pairs": _write(data / "methods-pairs.jsonl", _pairs("train", 24)),
        "pairs_held": _write(data / "methods-pairs-held.jsonl", _pairs("heldout", 8)),
        "prompts": _write(data / "methods-prompts.jsonl", _prompts("train", 16)),
        "prompts_held": _write(data / "methods-prompts-held.jsonl", _prompts("heldout", 8)),
    }
    base_path = resolve_base_path(cfg)
    tok = AutoTokenizer.from_pretrained(base_path)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    texts = [r["prompt"] + r["chosen"] for r in _pairs("train", 24)]
    torch.manual_seed(0)
    for step in range(20):
        batch = tok(texts[step % 3 * 8 : step % 3 * 8 + 8], return_tensors="pt", padding=True,
                    truncation=True, max_length=96)  # fmt: skip
        loss = model(
            **batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    src = tmp_path_factory.mktemp("parent")
    model.save_pretrained(str(src), safe_serialization=True)
    parent = Registry(cfg).register(
        src, adapter_id="api-parent", domain="api", base_model=base_model_id(cfg),
        metadata={"method": "sft", "kind": "adapter"},
    )  # fmt: skip
    ref = {"adapter_id": parent.adapter_id, "version": parent.version}
    yield {
        "cfg": cfg,
        "files": files,
        "parent_ref": ref,
        "parent_at": f"api-parent@{parent.version}",
    }
    mp.undo()


def qlp_train(*args: str, steps: int = 4):
    cli.state._config = None
    result = runner.invoke(cli.app, ["train", "--domain", "api", "--steps", str(steps), *args])
    return result, " ".join(result.output.split())


def _entry(home, adapter_id: str, method: str, data: Path, steps: int = 4) -> dict:
    cfg = home["cfg"]
    record = Registry(cfg).verify(adapter_id)  # signature, key, files: or it raises
    assert record.signed
    info = json.loads((record.path / "qlp.json").read_text())
    assert info["method"] == method
    assert info["data_hash"] == file_sha256(data)
    assert info["metrics"]["steps"] == steps
    return info


def test_dpo_on_top_of_a_parent(home):
    f = home["files"]
    result, out = qlp_train("--method", "dpo", "--data", str(f["pairs"]), "--heldout",
                            str(f["pairs_held"]), "--parent", home["parent_at"], "--lr", "1e-2",
                            "--batch-size", "4", "--adapter-id", f"api-dpo-{RUN}")  # fmt: skip
    assert result.exit_code == 0, out
    info = _entry(home, f"api-dpo-{RUN}", "dpo", f["pairs"])
    assert info["parent"] == home["parent_ref"]
    assert info["kind"] == "adapter" and len(info["centroid"]) == 384
    m = info["metrics"]
    assert m["preference_margin_after"] > m["preference_margin_before"], m
    assert "preference_accuracy_after" in m
    # the run in MLflow (tracking.*): params, a loss series from the checkpoint reports at
    # steps 2 and 4, the held-out metric, the registered adapter as tags
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home['cfg'].paths.root / 'mlflow.db'}")
    run = client.get_run(info["mlflow_run_id"])
    assert run.data.params["method"] == "dpo" and run.data.params["train.steps"] == "4"
    assert [p.step for p in client.get_metric_history(run.info.run_id, "loss")] == [2, 4]
    assert run.data.metrics["preference_margin_after"] == pytest.approx(
        m["preference_margin_after"]
    )
    assert run.data.tags["qlp.adapter_id"] == f"api-dpo-{RUN}"
    assert run.info.status == "FINISHED"
    tc = info["train_config"]  # train.* reached TRL: schedule, checkpoints
    assert (tc["lr_scheduler_type"], tc["checkpoint_every"]) == ("linear", 2)
    # the curve: the training loss of every step and the held-out loss, CSV + PNG
    run_dir = home["cfg"].paths.runs / info["run"]["run_name"]
    rows = [r.split(",") for r in (run_dir / "loss_curve.csv").read_text().splitlines()]
    assert rows[0] == ["split", "step", "loss"]
    assert [int(r[1]) for r in rows if r[0] == "train"] == [1, 2, 3, 4]
    assert [int(r[1]) for r in rows if r[0] == "heldout"] == [2, 4]
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert "loss curve:" in out


def test_reward_model_registered_and_loadable_as_a_reward(home):
    f = home["files"]
    rm_id = f"api-reward-{RUN}"
    result, out = qlp_train("--method", "reward", "--data", str(f["pairs"]), "--heldout",
                            str(f["pairs_held"]), "--lr", "1e-2", "--batch-size", "4",
                            "--adapter-id", rm_id)  # fmt: skip
    assert result.exit_code == 0, out
    info = _entry(home, rm_id, "reward", f["pairs"])
    assert info["kind"] == "reward_model" and "centroid" not in info  # never routed to
    m = info["metrics"]
    assert m["score_gap_after"] > m["score_gap_before"] + 0.5, m
    assert m["pair_accuracy_after"] >= 0.75 > m["pair_accuracy_before"] - 0.01, m

    # `--reward reward-model:<id>` verifies the entry, then scores with it (in the worker
    # a GRPO/RLOO run would; here in-process on held-out pairs)
    from qlp_ray.models.base import resolve_base_path
    from qlp_ray.train.method_runs import prepare_run, reward_function

    cfg = home["cfg"]
    run = prepare_run(cfg, "rloo", domain="api", data_path=f["prompts"],
                      reward=f"reward-model:{rm_id}@1")  # fmt: skip
    assert run.reward_model is not None and run.reward_model.version == 1
    score = reward_function(run.reward, "api", resolve_base_path(cfg), run.reward_model)
    held = _pairs("heldout", 8)
    prompts = [p["prompt"] for p in held]
    chosen = score(prompts=prompts, completions=[p["chosen"] for p in held])
    rejected = score(prompts=prompts, completions=[p["rejected"] for p in held])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 6, (chosen, rejected)
    with pytest.raises(InvalidRequest, match="is a reward model, not an adapter"):
        prepare_run(cfg, "dpo", domain="api", data_path=f["pairs"], parent=rm_id)


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_reinforce_methods_with_a_keyword_reward(home, method):
    f = home["files"]
    result, out = qlp_train("--method", method, "--data", str(f["prompts"]),
                            "--heldout", str(f["prompts_held"]), "--reward", "keyword:the",
                            "--lr", "1e-2", "--adapter-id", f"api-{method}-{RUN}",
                            steps=8)  # fmt: skip
    assert result.exit_code == 0, out
    info = _entry(home, f"api-{method}-{RUN}", method, f["prompts"], steps=8)
    assert info["reward"] == "keyword:the" and info["parent"] is None
    m = info["metrics"]  # 8 prompts x 4 seeded samples before and after
    assert m["mean_reward_after"] > m["mean_reward_before"] + 0.1, m


def test_distill_from_a_teacher_adapter(home):
    data = sample_path("api", "train")
    result, out = qlp_train("--method", "distill", "--data", str(data), "--teacher",
                            home["parent_at"], "--lr", "1e-2", "--batch-size", "8",
                            "--adapter-id", f"api-distill-{RUN}")  # fmt: skip
    assert result.exit_code == 0, out
    info = _entry(home, f"api-distill-{RUN}", "distill", data)
    assert info["teacher"] == home["parent_ref"]
    m = info["metrics"]
    assert m["eval_kl_after"] < m["eval_kl_before"], m


def test_rest_fine_tuning_job_runs_dpo(home, ray_dashboard):
    """POST /v1/fine-tuning/jobs with method dpo: a Ray job runs `qlp train --method dpo`,
    whose signed entry appears in the registry the gateway serves from."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from qlp_ray.serve.http.errors import install_error_handlers
    from qlp_ray.serve.http.routes_jobs import router

    f = home["files"]
    cfg = load_config(overrides={"serve": {"api_key": "user-key", "admin_key": "admin-secret"},
                                 "jobs": {"dashboard_address": ray_dashboard}})  # fmt: skip
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg)
    http = TestClient(app)
    admin = {"authorization": "Bearer admin-secret"}
    body = {"model": "api", "training_file": str(f["pairs"]), "method": "dpo",
            "validation_file": str(f["pairs_held"]),
            "hyperparameters": {"n_steps": 4, "batch_size": 4, "learning_rate": 1e-2}}  # fmt: skip
    bad = http.post("/v1/fine-tuning/jobs", json={**body, "reward": "json"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reward", bad.text
    r = http.post("/v1/fine-tuning/jobs", json=body, headers=admin)
    assert r.status_code == 200, r.text
    job = r.json()["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = http.get(f"/v1/fine-tuning/jobs/{job}", headers=admin).json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    assert status["status"] == "succeeded", status
    info = _entry(home, "api", "dpo", f["pairs"])
    assert info["run"]["run_name"] == job
    m = info["metrics"]
    assert m["preference_margin_after"] > m["preference_margin_before"], m
