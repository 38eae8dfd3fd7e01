"""cluster.yaml passes Ray's own cluster-launcher validation; KubeRay manifests are sane."""

from __future__ import annotations

import copy
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
    assert any("pip install" in c and '".[dev]"' in c for c in prepared["setup_commands"])
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


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


def test_kuberay_manifests() -> None:
    docs = {}
    for path in sorted((ROOT / "configs" / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert {"RayCluster", "RayService"} <= set(docs)
    for kind in ("RayCluster", "RayService"):
        assert docs[kind]["apiVersion"] == "ray.io/v1"
    spec = docs["RayCluster"]["spec"]
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
    serve = docs["RayService"]["spec"]
    assert yaml.safe_load(serve["serveConfigV2"])["applications"]
