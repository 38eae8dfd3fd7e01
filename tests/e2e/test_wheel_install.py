"""``pip install .`` works: build the wheel, install it into a fresh venv, serve from it.

The wheel is built from a copy of the source tree (what an sdist holds), installed with
``--no-deps`` into a new venv whose dependencies come from this venv's site-packages via a
plain path line in a ``.pth`` file (no re-download; a plain line does not run the
editable-install finder there, so the checkout stays invisible). From a temp cwd, the new
venv's ``qlp serve`` deploys the app, answers one ``/v1/completions`` on the base model,
and ``qlp shutdown`` removes it.

Ray: left alone, ``qlp serve`` reuses any Ray it finds (``ray.init(address="auto")`` falls
back to any raylet on the machine, e.g. this session's), so the test starts a private head
from the new venv (own temp dir, free ports, its own auth token) and hands ``qlp`` its
address in ``RAY_ADDRESS``; the head's workers run the new venv's Python, hence the wheel.
(tests/helpers/private_ray.py).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.helpers.private_ray import private_head, user_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
# What an sdist carries (MANIFEST.in + the packages); the build needs nothing else.
SOURCE_ITEMS = ("qlp_ray", "actors", "cython_ext", "configs", "setup.py", "pyproject.toml",
                "README.md", "MANIFEST.in")  # fmt: skip
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.c", "*.egg-info", "build")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for item in SOURCE_ITEMS:
        path = REPO / item
        if path.is_dir():
            shutil.copytree(path, src / item, ignore=IGNORE)
        elif path.is_file():
            shutil.copy2(path, src / item)
    out = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
         timeout=900, cwd=src)  # fmt: skip
    (wheel,) = out.glob("qlp_ray-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
          str(wheel)], timeout=300)  # fmt: skip
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
             timeout=60).stdout.strip()
    )  # fmt: skip
    # the dependencies: this venv's site-packages as a plain path, after the new venv's own
    (site / "zz_main_venv_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _env(venv: Path, home: Path, token: str, **extra: str) -> dict[str, str]:
    return user_env(home, token, venv / "bin", **extra)


def _home_with_tiny_model(qlp_home: Path, tmp: Path) -> Path:
    home = tmp / "home"
    home.mkdir()
    (home / "models").symlink_to(qlp_home / "models", target_is_directory=True)
    shutil.copytree(qlp_home / "keys", home / "keys")
    return home


def test_wheel_installs_into_a_fresh_venv_and_serves(qlp_home: Path):
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="qlpw_"))  # short: Ray's socket paths live under it
    head = None
    served = False
    try:
        wheel = _build_wheel(tmp)
        names = zipfile.ZipFile(wheel).namelist()
        for shipped in ("qlp_ray/_configs/prices.yaml", "qlp_ray/_configs/default.yaml",
                        "qlp_ray/_configs/tune/lora.yaml", "qlp_ray/py.typed",
                        "qlp_ray/data/samples/api.train.jsonl"):  # fmt: skip
            assert shipped in names, f"{shipped} missing from {wheel.name}"
        venv = _fresh_venv(tmp, wheel)
        home = _home_with_tiny_model(qlp_home, tmp)
        cwd = tmp / "cwd"
        cwd.mkdir()
        token = secrets.token_hex(32)
        env = _env(venv, home, token)
        python = str(venv / "bin" / "python")

        probe = _run([python, "-c", (
            "import qlp_ray, qlp_ray.core.paths as p, qlp_ray.serve.telemetry.cost as c\n"
            "print(qlp_ray.__file__); print(p.source_checkout()); print(c.DEFAULT_PRICES_FILE)"
        )], timeout=120, cwd=cwd, env=env).stdout.split("\n")  # fmt: skip
        assert Path(probe[0]).is_relative_to(venv), f"qlp_ray imported from {probe[0]}"
        assert probe[1] == "None"
        assert Path(probe[2]).is_relative_to(venv) and probe[2].endswith("_configs/prices.yaml")
        dumped = _run([str(venv / "bin" / "qlp"), "config", "dump"], timeout=120, cwd=cwd,
                      env=env).stdout  # fmt: skip
        assert dumped == (REPO / "configs" / "default.yaml").read_text()

        head = contextlib.ExitStack()
        address = head.enter_context(
            private_head(env, tmp / "ray", num_cpus=4, python=python)
        ).address
        port = _free_port()
        env = _env(venv, home, token, RAY_ADDRESS=address, QLP_SERVE__PORT=str(port),
                   QLP_SERVE__HOST="127.0.0.1", QLP_SERVE__HEALTH_TIMEOUT_S="400")  # fmt: skip
        served = True
        _run([str(venv / "bin" / "qlp"), "serve"], timeout=600, cwd=cwd, env=env)

        url = f"http://127.0.0.1:{port}"
        models = httpx.get(f"{url}/v1/models", timeout=60)
        assert models.status_code == 200, models.text
        (base,) = [m["id"] for m in models.json()["data"] if m["kind"] == "base"]
        r = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": base, "prompt": "Write a SQL query that counts orders per day.",
            "max_tokens": 8,
        })  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == base
        assert body["choices"][0]["text"].strip(), body
        assert body["usage"]["completion_tokens"] >= 1
    finally:
        try:
            if served:
                subprocess.run([str(tmp / "venv" / "bin" / "qlp"), "shutdown"], cwd=tmp,
                               env=env, capture_output=True, timeout=120, check=False)  # fmt: skip
        finally:
            if head is not None:
                head.close()
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"wheel install + serve test: {time.monotonic() - t0:.0f} s")
