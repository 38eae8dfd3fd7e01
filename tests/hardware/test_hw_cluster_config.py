"""cluster.yaml passes Ray's own cluster-launcher validation; the KubeRay manifests pass
the RayCluster / RayService CRD schemas (vendored from KubeRay, unknown fields refused as
`kubectl --validate=strict` does); both wire the shared state (S3 registry, PostgreSQL),
secrets from the environment only, and Ray token auth on every node."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation(cluster: dict) -> None:
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)  # raises on any schema or bounds problem
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["resources"]["qlp_cuda"] == 1
    assert types["cpu_worker"]["resources"]["qlp_cpu"] == 1
    assert sum(t.get("min_workers", 0) for t in types.values()) <= prepared["max_workers"]
    assert all(t["max_workers"] >= t.get("min_workers", 0) for t in types.values())
    assert any(c.endswith("pip install .") for c in prepared["setup_commands"])
    gpu_setup = " ".join(types["gpu_worker"]["worker_setup_commands"])
    assert '".[gpu]"' in gpu_setup and "cu128" in gpu_setup  # CUDA torch + vLLM there only
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    secrets = "/home/ubuntu/.qlp/cluster-secrets.env"
    assert prepared["file_mounts"][secrets] == "~/.qlp/cluster-secrets.env"
    for start in (head_start, " ".join(prepared["worker_start_ray_commands"])):
        # every node: secrets and the Ray token from the env file, token auth, shared config
        assert ". ~/.qlp/cluster-secrets.env" in start and "RAY_AUTH_MODE=token" in start
        assert "QLP_CONFIG=/home/ubuntu/qlp_ray/configs/qlp-cluster.yaml" in start


def test_cluster_qlp_config_shares_state() -> None:
    from qlp_ray.core.config import load_config
    from qlp_ray.core.config.secrets import secret_values

    cfg = load_config(ROOT / "configs" / "qlp-cluster.yaml", environ={})
    assert cfg.registry.uri.startswith("s3://")
    assert secret_values(cfg) == {}  # secrets come from the nodes' env file only


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda c: c.update(max_workers=0), ValueError),  # below the sum of min_workers
        (lambda c: c.update(unknown_field=1), jsonschema.ValidationError),
        (lambda c: c.update(head_node_type="nope"), ValueError),
    ],
)
def test_ray_validation_catches_broken_configs(cluster: dict, mutate, error) -> None:
    broken = copy.deepcopy(cluster)
    mutate(broken)
    with pytest.raises(error):
        validate_config(prepare_config(broken))


def _strict(schema: dict) -> dict:
    """The CRD schema refusing unknown fields where the CRD lists the known ones."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _crd_schema(kind: str) -> dict:
    path = ROOT / "tests" / "data" / "kuberay" / f"{kind.lower()}.v1.schema.json.gz"
    return _strict(json.loads(gzip.decompress(path.read_bytes())))


@pytest.fixture(scope="module")
def manifests() -> dict:
    docs = {}
    for path in sorted((ROOT / "configs" / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("kind", ["RayCluster", "RayService"])
def test_kuberay_manifests_pass_the_crd_schema(manifests: dict, kind: str) -> None:
    jsonschema.validate(manifests[kind], _crd_schema(kind))
    broken = copy.deepcopy(manifests[kind])
    broken["spec"]["enableInTreeAutoscalng"] = True  # a typo kubectl would refuse
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoscalng"):
        jsonschema.validate(broken, _crd_schema(kind))


def _pods(kind: str, doc: dict) -> list[dict]:
    spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_kuberay_manifests(manifests: dict) -> None:
    assert {"RayCluster", "RayService", "ConfigMap"} <= set(manifests)
    for kind in ("RayCluster", "RayService"):
        assert manifests[kind]["apiVersion"] == "ray.io/v1"
        for pod in _pods(kind, manifests[kind]):
            # every pod: shared config, secrets from the Secret (never inline), token auth
            (container,) = pod["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["RAY_AUTH_MODE"] == "token" and env["QLP_CONFIG"] == "/etc/qlp/qlp.yaml"
            assert not {"RAY_AUTH_TOKEN", "QLP_DB_URL", "QLP_S3__SECRET_ACCESS_KEY"} & set(env)
            assert container["envFrom"] == [{"secretRef": {"name": "qlp-secrets"}}]
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["qlp-config"]["configMap"]["name"] == "qlp-config"
    spec = manifests["RayCluster"]["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    # rayStartParams.resources is a quoted JSON string, as KubeRay passes it to `ray start`
    resources = json.loads(json.loads(groups["gpu"]["rayStartParams"]["resources"]))
    assert resources == {"qlp_cuda": 1}
    serve = yaml.safe_load(manifests["RayService"]["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "qlp_ray.serve.app:app_builder"
    assert app["args"] == {"config": "/etc/qlp/qlp.yaml"}


def test_configmap_holds_a_valid_shared_config(manifests: dict, tmp_path: Path) -> None:
    from qlp_ray.core.config import load_config
    from qlp_ray.core.config.secrets import secret_values

    data = manifests["ConfigMap"]["data"]
    (tmp_path / "qlp.yaml").write_text(data["qlp.yaml"])
    cfg = load_config(tmp_path / "qlp.yaml", environ={})
    assert cfg.registry.uri.startswith("s3://") and cfg.store.url == ""
    assert [str(p) for p in cfg.registry.trusted_keys] == ["/etc/qlp/signing_key.pub.pem"]
    assert secret_values(cfg) == {}  # secrets come from the Secret (envFrom) only
