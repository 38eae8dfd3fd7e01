"""Two nodes, two homes, one platform: the training side and the serving side share no
directory, only the S3 registry (a moto server), the PostgreSQL store and Ray.

Nodes A and B are added to the session's cluster, each started with its own environment
as a real node would be (``QLP_HOME`` of its own, the shared config file ``QLP_CONFIG``
with ``paths.node_home: true``, the store URL and S3 keys as node secrets) and a label
resource (``node_a`` / ``node_b``) that pins work to it. Then, as a user would:

- ``ray job submit --entrypoint-resources '{"node_a": 1}' -- qlp train ...``: the job
  driver runs on A, its Ray Train worker on B (``train.resources_per_worker``); the worker
  gets no path of A's home: it builds the base model in B's home, and its metrics and
  adapter come back to A through the run's checkpoint on S3; the adapter is signed with
  A's key and published to S3;
- a Ray task on A registers two more versions (the private key never leaves A);
- the app is deployed with one compositor replica on each node and the gateway and
  router on B; B trusts only the public key it is given (``registry.trusted_keys``);
- a hot-swap through the admin route is acknowledged by the replicas of both nodes,
  each having fetched and verified the new version into its own node's cache;
- a version whose S3 object and marker were rewritten is refused on B by the signature
  check;
- feedback posted through B's gateway is read by ``qlp improve --once`` run as a job on A.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, _environ, deployed

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

BUCKET = "qlp-multinode"
APP = "qlp_multinode"
USER = {"authorization": "Bearer mn-user"}
ADMIN = {"authorization": "Bearer mn-admin"}
SERVING = "qlp_test_serving"  # both nodes advertise one: one compositor replica on each
TINY = {"pretrain_steps": 10, "hidden_size": 64, "num_layers": 2}  # builds in seconds
SAMPLES = Path(__file__).resolve().parents[2] / "qlp_ray" / "data" / "samples"
FEEDBACK = 3  # thumbs-up posted through B (by the key that made the request: trusted)


def _shared_config(etc: Path, s3_endpoint: str) -> dict:
    """The one config file every node reads (a ConfigMap in KubeRay)."""
    return {
        "paths": {"node_home": True},
        "model": {"tiny": TINY},
        "registry": {
            "uri": f"s3://{BUCKET}/registry",
            "trusted_keys": [str(etc / "signing_key.pub.pem")],
        },  # fmt: skip
        "s3": {"endpoint_url": s3_endpoint},
        "train": {
            "storage_uri": f"s3://{BUCKET}/runs",
            "cpus_per_worker": 1.0,
            "checkpoint_every": 0,
        },  # fmt: skip
        "serve": {
            "port": SERVE_PORT,
            "app_name": APP,
            "api_key": "mn-user",
            "admin_key": "mn-admin",
            "compositor_replicas": 2,
            "compositor_num_cpus": 0.25,
            "compositor_resources": {SERVING: 1},
            "router_num_cpus": 0.25,
            "router_resources": {"node_b": 1},
            "gateway_resources": {"node_b": 1},
            "place_devices": False,
            "keep_training_slot": False,
            "health_timeout_s": 300,
        },
        "improve": {"live_ab": False},
    }


@pytest.fixture(scope="module")
def nodes(ray_session):
    """Nodes A and B with their own homes; yields where everything is."""
    import ray

    from qlp_ray.registry.signing import PUBLIC_KEY_FILE, init_keys
    from tests.helpers.moto_s3 import moto_s3
    from tests.helpers.postgres import PostgresUnavailable, postgres_database

    root = Path(tempfile.mkdtemp(prefix="qlpmn_"))
    homes = {"a": root / "node-a", "b": root / "node-b"}
    etc = root / "etc"  # the read-only config mount: config file and public key only
    for d in (*homes.values(), etc):
        d.mkdir()
    added = []
    try:
        with contextlib.ExitStack() as stack:
            s3 = stack.enter_context(moto_s3(BUCKET))
            try:
                db_url = stack.enter_context(postgres_database())
            except PostgresUnavailable as exc:
                pytest.skip(f"PostgreSQL not available: {exc}")
            init_keys(homes["a"] / "keys")  # `qlp keys init` on the training node
            shutil.copyfile(homes["a"] / "keys" / PUBLIC_KEY_FILE, etc / "signing_key.pub.pem")
            (etc / "qlp.yaml").write_text(yaml.safe_dump(_shared_config(etc, s3.endpoint_url)))
            secrets = {"QLP_DB_URL": db_url, "QLP_S3__ACCESS_KEY_ID": s3.access_key_id,
                       "QLP_S3__SECRET_ACCESS_KEY": s3.secret_access_key}  # fmt: skip
            for name, home in homes.items():
                env = {"QLP_HOME": str(home), "QLP_CONFIG": str(etc / "qlp.yaml"), **secrets}
                with _environ(**env):  # the node's Ray processes inherit it
                    resources = {f"node_{name}": 4, SERVING: 1}
                    added.append(ray_session.add_node(num_cpus=2, resources=resources))
            ray_session.cluster.wait_for_nodes()
            ids = {}
            for node in ray.nodes():
                for name in homes:
                    if node["Alive"] and f"node_{name}" in node["Resources"]:
                        ids[name] = node["NodeID"]
            assert len(ids) == 2, ids
            yield {"root": root, "homes": homes, "etc": etc, "s3": s3, "db_url": db_url,
                   "ids": ids, "secrets": secrets}  # fmt: skip
    finally:
        for node in added:
            ray_session.cluster.remove_node(node)
        shutil.rmtree(root, ignore_errors=True)


def _job(ray_session, args: list[str], node: str, env: dict | None = None) -> str:
    """``ray job submit --entrypoint-resources '{"node_<node>": 1}' -- qlp <args>``; logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_session.dashboard_url)
    entrypoint = " ".join([sys.executable, "-m", "qlp_ray", *args])
    runtime_env = {"env_vars": env} if env else None
    job = client.submit_job(entrypoint=entrypoint, entrypoint_resources={f"node_{node}": 1},
                            runtime_env=runtime_env)  # fmt: skip
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        status = client.get_job_status(job)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, f"{args}: {status}\n{logs[-4000:]}"
    return logs


def _files(home: Path, pattern: str = "*.safetensors") -> list[Path]:
    return sorted(home.rglob(pattern))


def _s3_keys(nodes, prefix: str) -> list[str]:
    from qlp_ray.registry.s3 import make_client

    client = make_client(nodes["s3"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def trained(nodes, ray_session):
    """One Ray Train run driven from A (a Jobs API job pinned to A) whose worker runs on B,
    then v2 and v3 signed on A."""
    import ray
    from ray.util.state import list_actors

    def train_workers() -> dict[str, str]:
        found = list_actors(address=ray_session.address, limit=10000,
                            filters=[("class_name", "=", "RayTrainWorker")])  # fmt: skip
        return {w.actor_id: w.node_id for w in found}

    earlier = train_workers()  # other modules' runs
    t0 = time.monotonic()
    logs = _job(ray_session,
                ["train", "--domain", "api", "--data", str(SAMPLES / "api.train.jsonl"),
                 "--steps", "3", "--run-name", "mn-api"], "a",
                env={"QLP_TRAIN__RESOURCES_PER_WORKER": '{"node_b": 1}'})  # fmt: skip
    train_nodes = {n for actor, n in train_workers().items() if actor not in earlier}
    train_s = time.monotonic() - t0
    # what each home holds once the run is over (before anything else here loads a model)
    after_train = {name: sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
                   for name, home in nodes["homes"].items()}  # fmt: skip

    def register_versions() -> dict:  # a task on A: A's home, A's private key
        import torch
        from peft import LoraConfig, get_peft_model

        from qlp_ray.core.config import load_config
        from qlp_ray.models.base import base_model_id, load_base
        from qlp_ray.registry.store import Registry

        cfg = load_config()  # this node's QLP_HOME and QLP_CONFIG
        base, _ = load_base(cfg)
        registry = Registry(cfg)
        for seed in (2, 3):
            torch.manual_seed(seed)
            lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                              init_lora_weights=False)  # fmt: skip
            model = get_peft_model(base, lora)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 1.0)
            src = cfg.paths.root / "src" / f"v{seed}"
            model.save_pretrained(str(src))
            base = model.unload()
            registry.register(src, adapter_id="api", domain="api", base_model=base_model_id(cfg))
        registry.set_current("api", 1)
        return {"home": str(cfg.paths.root), "node": ray.get_runtime_context().get_node_id()}

    task = ray.remote(num_cpus=0, resources={"node_a": 1})(register_versions)
    where = ray.get(task.remote(), timeout=300)
    return {"logs": logs, "train_nodes": train_nodes, "train_s": train_s, "registered": where,
            "after_train": after_train}  # fmt: skip


def test_the_adapter_is_trained_on_b_for_a_driver_on_a(nodes, trained):
    """The worker on B got no path of A's home: it built the base model in B's home (A's
    driver built none), and the metrics reached A's run directory through the checkpoint."""
    a = nodes["homes"]["a"]
    assert trained["train_nodes"] == {nodes["ids"]["b"]}, trained["train_nodes"]
    on_a, on_b = trained["after_train"]["a"], trained["after_train"]["b"]
    assert not [f for f in on_a if f.startswith("models/")], on_a  # the driver built nothing
    built = [f for f in on_b if f.startswith("models/tiny-llama-")]
    assert any(f.endswith("/model.safetensors") for f in built), on_b
    assert not [f for f in on_b if not f.startswith("models/")], on_b  # no run files, no keys
    # rank 0's metrics.jsonl travelled in the final checkpoint on S3, and the driver on A
    # wrote its run directory from it: the held-out loss before and after, and the steps
    checkpointed = [k for k in _s3_keys(nodes, "runs/mn-api/") if k.endswith("/metrics.jsonl")]
    assert checkpointed, _s3_keys(nodes, "runs/mn-api/")
    lines = [
        json.loads(x) for x in (a / "runs" / "mn-api" / "metrics.jsonl").read_text().splitlines()
    ]
    evals = [r["eval_loss"] for r in lines if "eval_loss" in r]
    assert len(evals) >= 2 and all(v > 0 for v in evals), lines
    assert max(r["step"] for r in lines) == 3, lines
    assert (a / "runs" / "mn-api" / "loss_curve.png").is_file()


def test_the_adapter_is_signed_on_a_and_published_to_s3(nodes, trained):
    a, b = nodes["homes"]["a"], nodes["homes"]["b"]
    assert trained["registered"] == {"home": str(a), "node": nodes["ids"]["a"]}
    assert "mn-api" in trained["logs"], trained["logs"][-2000:]
    keys = _s3_keys(nodes, "registry/adapters/api/")
    for v in (1, 2, 3):
        assert f"registry/adapters/api/files/{v}/adapter_model.safetensors" in keys, keys
        assert f"registry/adapters/api/published/{v:08d}.json" in keys
    assert _s3_keys(nodes, "runs/mn-api/"), "the Ray Train run keeps its results on S3"
    adapters = [p for p in _files(b) if p.relative_to(b).parts[0] != "models"]
    assert adapters == [] and not (b / "keys").exists()  # B holds no adapter yet, no key
    assert not (a / "feedback.db").exists()  # the store is PostgreSQL


@pytest.fixture(scope="module")
def app(nodes, trained):
    from qlp_ray.core.config import load_config

    driver_home = nodes["root"] / "driver"  # the deploying shell's home: none of the nodes'
    environ = {"QLP_HOME": str(driver_home), **nodes["secrets"]}
    cfg = load_config(nodes["etc"] / "qlp.yaml", environ=environ)
    assert cfg.paths.root == driver_home
    try:
        with deployed(cfg) as url:
            assert url == SERVE_URL
            yield {"cfg": cfg}
    finally:  # the app's swap board is a detached actor: it would outlive the module
        import ray

        from qlp_ray.serve.swap_board_actor import ACTOR_PREFIX

        with contextlib.suppress(ValueError):
            board = ray.get_actor(ACTOR_PREFIX + APP, namespace=cfg.hardware.namespace)
            ray.kill(board, no_restart=True)


def _replica_nodes(ray_session, deployment: str) -> list[str]:
    from ray.util.state import list_actors

    name = f"ServeReplica:{APP}:{deployment}"
    filters = [("class_name", "=", name), ("state", "=", "ALIVE")]
    actors = list_actors(address=ray_session.address, filters=filters)
    return sorted(a.node_id for a in actors)


def _complete(prompt: str, model: str = "api") -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    r = httpx.post(SERVE_URL + "/v1/completions", json=body, headers=USER, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_replicas_run_on_both_nodes_with_their_own_homes(nodes, app, ray_session):
    ids = nodes["ids"]
    assert _replica_nodes(ray_session, "Compositor") == sorted(ids.values())
    assert _replica_nodes(ray_session, "Gateway") == [ids["b"]]
    assert _replica_nodes(ray_session, "Router") == [ids["b"]]
    b = nodes["homes"]["b"]
    # B fetched (and verified) the current version, v1, into its own cache when its gateway
    # built the model table; nothing else of the registry is on B, and no key
    cached = _files(b, "adapter_model.safetensors")
    assert [p.relative_to(b).parts for p in cached] == [
        ("cache", "s3", "api", "v1", "adapter_model.safetensors")
    ], cached
    assert not (b / "keys").exists()
    assert not (nodes["root"] / "driver" / "models").exists()  # replicas built on their node
    assert (b / "models").is_dir()


def test_b_serves_the_adapter_trained_on_a(nodes, app):
    out = _complete("GET /users returns")
    assert out["qlp"]["adapter"] == "api" and out["qlp"]["version"] == 1, out


def test_no_secret_is_in_what_serve_keeps(nodes, app):
    """Serve keeps each deployment's init args in its controller's checkpoint (the GCS):
    they carry markers, not the keys or the database URL. The replicas on A and B took the
    S3 keys and QLP_DB_URL from their node's environment (read first) and the admin key,
    which only the YAML file had, from the deploying process's secrets file."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    keys = _internal_kv_list(b"", namespace=b"serve")
    kept = b"".join(_internal_kv_get(k, namespace=b"serve") or b"" for k in keys)
    assert nodes["s3"].endpoint_url.encode() in kept  # the config is in there ...
    assert b"qlp_secret" in kept
    for secret in ("mn-admin", "mn-user", nodes["db_url"]):  # ... its secrets are not
        assert secret.encode() not in kept, secret
    driver_file = nodes["root"] / "driver" / "secrets" / f"serve-{APP}.json"
    assert json.loads(driver_file.read_text())["serve.admin_key"] == "mn-admin"
    assert driver_file.stat().st_mode & 0o077 == 0
    r = httpx.get(SERVE_URL + "/v1/admin/routes", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text  # the admin key resolved in B's gateway


def test_a_hot_swap_reaches_the_replicas_on_both_nodes(nodes, app):
    a, b = nodes["homes"]["a"], nodes["homes"]["b"]
    before = {_complete("POST /orders creates")["choices"][0]["text"] for _ in range(4)}
    r = httpx.post(SERVE_URL + "/v1/admin/swap", headers=ADMIN, timeout=180,
                   json={"old": "api@1", "new": "api@2", "warm": True})  # fmt: skip
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["acknowledged"] == {"warm": 2, "invalidate": 2}, out
    assert out["acknowledged_nodes"]["warm"] == sorted(nodes["ids"].values()), out
    # each replica fetched v2 from S3 into its own node's cache
    for home in (a, b):
        assert (home / "cache" / "s3" / "api" / "v2" / "adapter_model.safetensors").is_file()
    after = [_complete("POST /orders creates") for _ in range(6)]
    assert {o["qlp"]["version"] for o in after} == {2}
    texts = {o["choices"][0]["text"] for o in after}
    assert len(texts) == 1 and texts != before, (before, texts)


def test_b_refuses_a_version_rewritten_in_s3(nodes, app):
    from qlp_ray.registry.s3 import make_client

    client = make_client(nodes["s3"])
    key = "registry/adapters/api/files/3/adapter_model.safetensors"
    data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    forged = data[:-8] + b"tampered"
    client.put_object(Bucket=BUCKET, Key=key, Body=forged)
    # the forger also rewrites the upload marker: only the signed manifest is left to catch it
    marker_key = "registry/adapters/api/published/00000003.json"
    marker = json.loads(client.get_object(Bucket=BUCKET, Key=marker_key)["Body"].read())
    for entry in marker["files"]:
        if entry["path"] == "adapter_model.safetensors":
            entry["sha256"] = hashlib.sha256(forged).hexdigest()
    client.put_object(Bucket=BUCKET, Key=marker_key, Body=json.dumps(marker).encode())
    r = httpx.post(SERVE_URL + "/v1/admin/swap", headers=ADMIN, timeout=180,
                   json={"old": "api@2", "new": "api@3", "warm": True})  # fmt: skip
    assert 400 <= r.status_code < 500, r.text
    message = r.json()["error"]["message"]
    assert "api" in message and "adapter_model.safetensors" in message, message
    assert _complete("POST /orders creates")["qlp"]["version"] == 2  # nothing switched


def test_feedback_through_b_is_read_by_improve_on_a(nodes, app, ray_session):
    prompts = ["List the open orders", "Delete a user by id", "Page through invoices"]
    for prompt in prompts[:FEEDBACK]:  # distinct prompts: distinct training examples
        rid = _complete(prompt)["qlp"]["request_id"]
        r = httpx.post(SERVE_URL + "/v1/feedback", headers=USER, timeout=60,
                       json={"request_id": rid, "kind": "thumbs", "value": 1})  # fmt: skip
        assert r.status_code < 300, r.text
    from qlp_ray.improve.feedback_data import collect_examples
    from qlp_ray.store.database import FeedbackStore

    # what B's gateway wrote, read here straight from PostgreSQL
    store = FeedbackStore(nodes["db_url"])
    thumbs = store.feedback_with_requests(kinds=["thumbs"], domain="api")
    assert len(thumbs) == FEEDBACK, thumbs
    imp = app["cfg"].improve
    examples = collect_examples(store, "api", min_score=imp.min_validation_score,
                                heldout_fraction=imp.heldout_fraction)  # fmt: skip
    assert len(examples.train) + len(examples.heldout) == FEEDBACK
    logs = _job(ray_session, ["improve", "--once", "--json", "--domain", "api"], "a")
    start = logs.index("[\n {")
    outcomes, _ = json.JSONDecoder().raw_decode(logs[start:])
    [api] = [o for o in outcomes if o["domain"] == "api"]
    # the improve loop on A counts the same training examples (the rest is held out)
    assert examples.size >= 1
    assert api["action"] == "skipped" and api["numbers"] == {"new": examples.size}, api
    for home in nodes["homes"].values():
        assert not (home / "feedback.db").exists()
