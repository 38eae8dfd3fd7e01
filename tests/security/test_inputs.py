"""Issue 22, findings 3 and 6: a fine-tuning job's ``training_file`` could be any ``*.jsonl``
on the gateway node and the error told whether a path existed; a non-ASCII bearer token or
a model id like ``a@²`` gave a 500; ``seed`` was unbounded; no body cap."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.models.composition import parse_multiplex_id
from qlp_ray.serve.http.protocol import ChatCompletionRequest, CompletionRequest
from qlp_ray.serve.http.routes_jobs import check_data_file
from tests.security.conftest import bearer

ROW = {
    "instruction": "Write a SQL join of orders and customers",
    "input": "",
    "output": "SELECT * FROM orders JOIN customers USING (customer_id);",
    "domain": "dataeng",
}


def _job(client, key, training_file):
    return client.post("/v1/fine-tuning/jobs", headers=bearer(key),
                       json={"model": "dataeng", "training_file": training_file})  # fmt: skip


def test_training_files_outside_the_data_root_are_one_400_that_names_no_server_path(
    keyed, tmp_path
):
    client, keys, cfg = keyed
    secret = tmp_path / "outside" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text('{"x": 1}\n')
    root = cfg.paths.root / "data"
    root.mkdir(parents=True, exist_ok=True)
    os.symlink(secret, root / "link.jsonl")  # a symlink inside pointing outside
    tries = [str(secret), str(tmp_path / "outside" / "missing.jsonl"),
             str(root / ".." / "outside" / "secret.jsonl"), str(root / "link.jsonl"),
             "../../etc/passwd.jsonl", "/etc/hostname"]  # fmt: skip
    messages = set()
    for path in tries:
        r = _job(client, keys["trainer"], path)
        assert r.status_code == 400, (path, r.text)
        message = r.json()["error"]["message"]
        assert str(tmp_path) not in message and str(cfg.paths.root) not in message
        messages.add(message)
    assert len(messages) == 2  # one for "not .jsonl", one for every .jsonl: exists or not


def test_uploads_are_stored_by_content_hash_and_usable_by_id(keyed):
    client, keys, cfg = keyed
    r = client.post("/v1/files", headers=bearer(keys["trainer"]), json={"rows": [ROW, ROW]})
    assert r.status_code == 200, r.text
    again = client.post("/v1/files", headers=bearer(keys["trainer"]), json={"rows": [ROW, ROW]})
    import hashlib

    body = r.json()
    text = open(body["path"], encoding="utf-8").read()
    assert (
        body["id"] == again.json()["id"] == "file-" + hashlib.sha256(text.encode()).hexdigest()[:32]
    )
    assert check_data_file(cfg, body["id"], "training_file") == body["path"]
    with pytest.raises(InvalidRequest):
        check_data_file(cfg, "file-" + "0" * 32, "training_file")


@pytest.mark.parametrize("token", [b"Bearer \xff\xfe", "Bearer clé".encode(), b"Bearer \x00",
                                   "Bearer ²".encode()])  # fmt: skip
def test_any_bytes_in_the_bearer_token_are_a_401(keyed, token):
    client, _, _ = keyed
    for path in ("/v1/admin/analytics", "/v1/fine-tuning/jobs"):
        r = client.get(path, headers={"authorization": token})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("model", ["a@\u00b2", "a@\u0663", "a@-1", "a@99999999999999999999"])
def test_odd_pinned_versions_are_a_400(model):
    with pytest.raises(InvalidRequest):
        parse_multiplex_id(model)


@pytest.mark.parametrize("field", [{"seed": 2**63}, {"seed": -1}, {"n": 10**6},
                                   {"temperature": 1e9}, {"top_p": 2.0}])  # fmt: skip
def test_numeric_fields_are_bounded(field):
    with pytest.raises(ValidationError):
        CompletionRequest(model="base", prompt="hi", **field)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="base", messages=[{"role": "user", "content": "hi"}], **field)


def test_a_body_over_the_cap_is_a_413(keyed):
    client, keys, cfg = keyed
    big = {"rows": [ROW] * (cfg.serve.max_body_bytes // 100)}
    r = client.post("/v1/files", headers=bearer(keys["trainer"]), json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
