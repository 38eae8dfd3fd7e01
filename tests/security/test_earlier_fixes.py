"""Issue 22 findings fixed before tests/security existed, pinned here: client-chosen
request ids, a ``.pem`` dropped into ``keys/trusted/``, secrets in jobs' runtime env."""

from __future__ import annotations

import shutil

from qlp_ray.core.jobs import _runtime_env
from qlp_ray.registry.signing import init_keys, trusted_public_keys
from tests.security.conftest import bearer


def test_request_ids_are_the_servers_whatever_the_client_sends(keyed):
    client, keys, _ = keyed
    ids = set()
    for _ in range(3):
        r = client.post("/v1/feedback", headers={**bearer(keys["user"]), "x-request-id": "dup"},
                        json={"request_id": "x", "kind": "thumbs", "value": 1})  # fmt: skip
        ours = r.headers["x-qlp-request-id"]
        assert ours.startswith("req-") and ours != "dup"
        ids.add(ours)
    assert len(ids) == 3  # the same client id never names the same row twice


def test_a_pem_dropped_into_keys_trusted_is_not_trusted(tmp_path, keyed):
    _, _, cfg = keyed
    init_keys(cfg.paths.keys)
    before = set(trusted_public_keys(cfg))
    attacker = init_keys(tmp_path / "attacker")
    drop = cfg.paths.keys / "trusted"
    drop.mkdir(exist_ok=True)
    shutil.copy(attacker.public_key_path, drop / "evil.pem")  # any name
    shutil.copy(attacker.public_key_path, drop / f"{attacker.key_id}.pub.pem")  # its id's name
    (drop / f"{attacker.key_id}.pub.pem").chmod(0o666)  # writable by others
    assert set(trusted_public_keys(cfg)) == before


def test_jobs_get_no_secret_in_their_runtime_env(monkeypatch):
    secrets = {
        "QLP_SERVE__API_KEY": "u",
        "QLP_SERVE__ADMIN_KEY": "a",
        "QLP_DB_URL": "postgresql://qlp:pw@db/qlp",
        "QLP_STORE__URL": "postgresql://x",
    }
    for k, v in {**secrets, "QLP_TRAIN__STEPS": "3"}.items():
        monkeypatch.setenv(k, v)
    env = _runtime_env(None)["env_vars"]
    assert env["QLP_TRAIN__STEPS"] == "3"
    assert not set(secrets) & set(env) and not set(secrets.values()) & set(env.values())
