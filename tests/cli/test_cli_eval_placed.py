"""`qlp eval` with a reachable Ray cluster: the scheduler places the evaluation (workload
``inference``), it runs as a Ray task held as a placement, and its numbers equal the
in-process run (the session's cluster, CPU only; a small eval: 2 samples, 4 tokens)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from qlp_ray.cli import app, state
from qlp_ray.core.config import load_config
from qlp_ray.data.capsules import sample_path
from qlp_ray.evaluate.runner import load_eval_set
from qlp_ray.evaluate.suite import score_records
from tests.helpers.tiny_lm import SMALL_BUILTIN

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration

NAMESPACE = "qlp_eval_placed_test"


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory, ray_session):
    home = tmp_path_factory.mktemp("eval_placed_home")
    cfg = {
        "paths": {"home": str(home)},
        "model": {"tiny": SMALL_BUILTIN},
        "evaluation": {"max_new_tokens": 4},
        "hardware": {"namespace": NAMESPACE, "device_actors": False},
    }
    path = home / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield path
    for entry in ray.util.list_named_actors(all_namespaces=True):  # the module's scheduler
        if entry["namespace"] == NAMESPACE:
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE), no_restart=True)


def _invoke(cfg_file, *args) -> str:
    state._config = None  # the CLI caches its config per process
    result = CliRunner().invoke(app, ["--config", str(cfg_file), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_eval_runs_as_a_placed_ray_task_with_in_process_numbers(cfg_file):
    out = json.loads(
        _invoke(cfg_file, "eval", "run", "-d", "api", "--limit", "2", "--no-record", "--json")
    )
    where = out["ran_on"]
    assert where["where"] == "ray" and where["workload"] == "inference"
    assert where["device_class"] == "cpu" and where["ray_options"] == {"num_cpus": 1.0}
    assert where["node_id"] == ray.get_runtime_context().get_node_id()  # CPU only: the head
    scheduler = ray.get_actor("qlp-scheduler", namespace=NAMESPACE)
    history = [h for h in ray.get(scheduler.history.remote()) if h["job_id"] == where["placement"]]
    assert [(h["kind"], h["device_class"], h["outcome"]) for h in history] == [
        ("inference", "cpu", "done")
    ]
    assert where["placement"] not in ray.get(scheduler.placements.remote())  # released
    shown = _invoke(cfg_file, "devices", "--placements", "--json")
    assert json.loads(shown)["workload:inference"]["done"] == 1

    cfg = load_config(cfg_file)  # the same evaluation in this process
    records = load_eval_set(sample_path("api", "heldout"))[:2]
    local = score_records(cfg, records, baseline=False)["metrics"]
    for name in ("n_examples", "perplexity", "mean_nll", "exact_match", "token_f1", "bleu",
                 "generated_tokens"):  # fmt: skip
        assert out["metrics"][name] == pytest.approx(local[name], rel=1e-5), name
