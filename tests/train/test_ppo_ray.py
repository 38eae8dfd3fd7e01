"""PPO on Ray Train (2 workers, one killed mid-run): the held-out reward rises, the KL to
the reference stays bounded, and the restarted worker group resumes from its checkpoint.
Then ``qlp train --method ppo`` continues that adapter and registers a signed version
with its lineage, its value head (signed with it), its MLflow run and its curve; a tampered
value head is refused before anything loads. Two Ray Train runs in all."""

from __future__ import annotations

import json
import uuid

import pytest

from qlp_ray.train.ppo_loop import VALUE_HEAD_FILE, PPOOptions
from qlp_ray.train.ray_ppo import train_ppo_on_ray
from qlp_ray.train.rewards import keyword_reward
from tests.train.test_ppo import _prompts

pytestmark = pytest.mark.integration

REWARD_GAIN = 0.2  # held-out mean reward must rise by at least this (reward in [0, 1])
KL_BOUND = 4.0  # nats per completion (exact KL to the adapter-disabled base, 8 tokens)
KILL_AT, CHECKPOINT_EVERY = 7, 5


@pytest.fixture(scope="module")
def cfg(qlp_home, ray_session):
    from qlp_ray import cli
    from qlp_ray.core.config import load_config

    mp = pytest.MonkeyPatch()
    mp.setenv("QLP_HOME", str(qlp_home))
    mp.setenv("QLP_TRAIN__CPUS_PER_WORKER", "0.5")
    for console in (cli.console, cli.err_console):  # no wrapping inside asserted messages
        mp.setattr(console, "_width", 400)
    yield load_config()
    mp.undo()


@pytest.fixture(scope="module")
def killed_run(cfg, tmp_path_factory):
    run = f"ppo-kill-{uuid.uuid4().hex[:6]}"  # an existing run name would resume that run
    res = train_ppo_on_ray(
        cfg,
        prompts=_prompts("train", 64),
        eval_prompts=_prompts("heldout", 8),
        reward=keyword_reward(["steps"]),
        options=PPOOptions(
            steps=20,
            batch_size=8,
            learning_rate=3e-3,
            kl_coef=0.2,
            checkpoint_every=CHECKPOINT_EVERY,
            max_new_tokens=8,
        ),
        workers=2,
        output_dir=tmp_path_factory.mktemp("ppo") / "adapter",
        run_name=run,
        max_failures=1,
        _kill_at_step=KILL_AT,
        _kill_rank=1,
    )
    return run, res


def test_ppo_two_workers_reward_rises_kl_bounded_and_a_killed_worker_resumes(cfg, killed_run):
    run, res = killed_run
    m = res.metrics
    assert (cfg.paths.runs / f"{run}.killed").is_file()  # rank 1 really died at step 7
    assert m["resumed_from_step"] == 5.0  # ... and the new group resumed from step 5, not 0
    assert m["steps"] == 20.0 and m["workers"] == 2.0 and m["finished"] == 1.0
    assert m["reward_after"] >= m["reward_before"] + REWARD_GAIN, m
    assert 0.0 <= m["kl_after"] < KL_BOUND, m
    assert m["kl_before"] == pytest.approx(0.0, abs=1e-5)  # LoRA starts as the identity
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    assert (res.adapter_dir / VALUE_HEAD_FILE).is_file()  # the critic travels with the adapter


def test_qlp_train_method_ppo_continues_a_parent_and_registers_it(cfg, killed_run, tmp_path):
    from typer.testing import CliRunner

    from qlp_ray import cli
    from qlp_ray.data.capsules import file_sha256
    from qlp_ray.models.base import base_model_id
    from qlp_ray.registry import Registry

    _, res = killed_run
    parent = Registry(cfg).register(
        res.adapter_dir,
        adapter_id="devops-ppo-parent",
        domain="devops",
        base_model=base_model_id(cfg),
        metadata={"method": "ppo", "kind": "adapter"},
    )
    assert (parent.path / VALUE_HEAD_FILE).is_file()  # --parent continues it
    data, held = tmp_path / "prompts.jsonl", tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in _prompts("train", 16)))
    held.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in _prompts("heldout", 4)))
    cli.state._config = None
    result = CliRunner().invoke(cli.app, [
        "train", "--domain", "devops", "--method", "ppo", "--data", str(data), "--heldout",
        str(held), "--reward", "keyword:steps", "--parent", f"devops-ppo-parent@{parent.version}",
        "--steps", "4", "--workers", "1", "--batch-size", "4", "--lr", "1e-3",
        "--adapter-id", "devops-ppo", "--kl-coef", "0.15",
    ])  # fmt: skip
    out = " ".join(result.output.split())
    assert result.exit_code == 0, out
    record = Registry(cfg).verify("devops-ppo")  # signature, key, files: or it raises
    assert record.signed
    manifest = json.loads((record.path / "manifest.json").read_text())
    assert VALUE_HEAD_FILE in json.dumps(manifest["files"])  # the signature covers the head
    info = json.loads((record.path / "qlp.json").read_text())
    assert info["method"] == "ppo" and info["kind"] == "adapter"
    assert info["parent"] == {"adapter_id": "devops-ppo-parent", "version": parent.version}
    assert info["reward"] == "keyword:steps"
    assert info["data_hash"] == file_sha256(data)
    m = info["metrics"]
    assert m["steps"] == 4
    assert m["kl_before"] == pytest.approx(0.0, abs=1e-5)  # the reference is the parent
    assert m["mean_reward_before"] >= 0.5, m  # the parent already learnt the keyword
    assert 0.0 <= m["kl_after"] < KL_BOUND, m
    assert info["train_config"]["kl_coef"] == 0.15  # --kl-coef reached the run

    # MLflow: the options as params, reward and KL at every step, the registered adapter
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cfg.paths.root / 'mlflow.db'}")
    run = client.get_run(info["mlflow_run_id"])
    assert run.data.params["method"] == "ppo" and run.data.params["train.kl_coef"] == "0.15"
    for key in ("reward", "kl", "policy_loss", "value_loss"):
        assert [p.step for p in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4]
    assert run.data.metrics["mean_reward_after"] == pytest.approx(m["mean_reward_after"])
    assert run.data.tags["qlp.adapter_id"] == "devops-ppo" and run.info.status == "FINISHED"

    # the curve: loss, reward and KL per step, as CSV and PNG in the run directory
    run_dir = cfg.paths.runs / info["run"]["run_name"]
    rows = (run_dir / "loss_curve.csv").read_text().splitlines()
    assert rows[0] == "split,step,value"
    assert [r.split(",")[:2] for r in rows if r.startswith("reward,")] == [
        ["reward", str(i)] for i in (1, 2, 3, 4)
    ]
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert f"loss curve: {run_dir / 'loss_curve.png'}" in out

    # a tampered value head: `--parent` refuses the version before anything is loaded
    head = record.path / VALUE_HEAD_FILE
    tampered = bytearray(head.read_bytes())
    tampered[-1] ^= 0xFF  # one bit pattern of the last weight
    head.write_bytes(bytes(tampered))
    cli.state._config = None
    result = CliRunner().invoke(cli.app, [
        "train", "--domain", "devops", "--method", "ppo", "--data", str(data),
        "--reward", "keyword:steps", "--parent", f"devops-ppo@{record.version}", "--steps", "2",
    ])  # fmt: skip
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and VALUE_HEAD_FILE in out, out
