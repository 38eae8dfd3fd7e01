"""Schemathesis over the in-process app's /openapi.json: every operation of the gateway's
routers (admin, corrections, experiments, adapters, jobs, datasets, files, feedback), with
each role's key and with none, a fixed seed, >= 1,000 generated cases (x 5 keys): no 500,
every error in the OpenAI shape, no server path or traceback in a body. The only 5xx
allowed are the jobs routes' 503 "the Ray Jobs API is unreachable" and the devices
route's 503 "the hardware scheduler is not reachable": no Ray cluster here.

Not covered here: the Serve-only routes (completions, chat, models) and the routes that
need a compositor or router handle (hot-swap, routing table); tests/serve covers those.
"""

from __future__ import annotations

import json
import re

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from qlp_ray.core.api_keys import create_key, key_file
from qlp_ray.registry.store import Registry
from qlp_ray.serve.experiment_hook import GatewayExperiments
from qlp_ray.serve.model_table import ModelTable
from tests.security.conftest import ROLES, bearer, build_app, make_cfg

EXAMPLES_PER_OPERATION = 48
MIN_CASES = 1000  # generated requests, each sent with every role's key and with none
TRACE = re.compile(r"Traceback|File \"/|\.py\", line|/work/|/tmp/|site-packages")


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    cfg = make_cfg(
        home, {"max_body_bytes": 65536}, jobs={"dashboard_address": "http://127.0.0.1:9"}
    )
    keys = {role: create_key(key_file(cfg.paths.keys), role, role)[0] for role in ROLES}
    app = build_app(cfg)
    gw = app.state.gateway
    gw.registry = Registry(cfg)
    gw.experiments = GatewayExperiments(cfg, gw.recorder.store)
    gw.models = ModelTable(gw.registry, "base", None, max_stack_size=4, poll_s=0.0)
    yield app, keys, str(home)
    gw.recorder.close()


def _check(response, home: str) -> None:
    status = response.status_code
    # 503 only as the answer that the Ray Jobs API or the hardware scheduler (no Ray here)
    # is unreachable
    unavailable = status == 503 and (
        "Ray Jobs API" in response.text or "hardware scheduler is not" in response.text
    )
    assert status < 500 or unavailable, (status, response.text[:500])
    body = response.text
    assert not TRACE.search(body) and home not in body, body[:500]
    if status >= 400:
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]


def test_fuzz_every_operation_with_every_role(fuzz_app):
    app, keys, home = fuzz_app
    schema = schemathesis.openapi.from_dict(app.openapi())
    auths = [{}] + [bearer(keys[r]) for r in ROLES]
    sent = {"n": 0, "cases": 0, "by_status": {}}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 25  # every router's operations are in the schema
    with TestClient(app, raise_server_exceptions=False) as client:
        for op in operations:

            @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None,
                      deadline=None, suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=op.as_strategy())
            def run(case):
                kwargs = case.as_transport_kwargs(base_url="http://testserver")
                sent["cases"] += 1
                for auth in auths:
                    headers = {k: v for k, v in (kwargs.get("headers") or {}).items()
                               if k.lower() != "authorization"} | auth  # fmt: skip
                    r = client.request(
                        kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                        headers=headers, content=_content(kwargs),
                    )  # fmt: skip
                    sent["n"] += 1
                    sent["by_status"][r.status_code] = sent["by_status"].get(r.status_code, 0) + 1
                    _check(r, home)

            run()
    print(f"fuzz: {sent['cases']} cases, {sent['n']} requests over {len(operations)} "
          f"operations: {sent['by_status']}")  # fmt: skip
    assert sent["cases"] >= MIN_CASES
    assert sum(v for k, v in sent["by_status"].items() if k < 300) > 0  # some got through


def _content(kwargs):
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    return kwargs.get("content") or kwargs.get("data")
