"""Install from the wheel, let ``qlp serve`` start Ray, train while serving: a user's first run.

``pip install .``: the wheel is built from the sdist's files and installed into a fresh
venv (tests/helpers/wheel_venv.py). From a clean shell (own ``HOME``, ``TMPDIR``, no
``RAY_ADDRESS``, limited to 2 CPUs as on this machine) ``qlp serve`` starts its own Ray
cluster with token auth (qlp_ray/core/runtime.py) and deploys the default app: the
scheduler shrinks the replicas' CPU reservations so one training worker still fits
(qlp_ray/hardware/cpu_share.py). Its HTTP and dashboard ports listen on loopback only, and
a Ray client without the token is refused.

Then, while a client keeps sending completions, three training paths each run to a signed
adapter in the registry: a REST fine-tuning job, the README's ``ray job submit`` block run
verbatim in bash, and ``qlp improve --once`` (fed corrections the way the gateway logs them).
Not one request may fail; the latency ratio busy/idle is printed for benchmarks/RESULTS.md.
``qlp shutdown --stop-ray`` ends that cluster and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from qlp_ray.core.config import load_config
from tests.helpers.private_ray import kill_leftovers, user_env
from tests.helpers.ray_start import free_port
from tests.helpers.wheel_venv import REPO, SHIPPED, build_wheel, fresh_venv

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

MAIN_BIN = Path(sys.executable).parent  # the user's shell also has a `ray` client
STEPS = "8"
README_DASHBOARD = "http://127.0.0.1:8265"


def readme_job_block() -> str:
    """The bash block of the README's "Submit long jobs to Ray" section, as written."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Submit long jobs to Ray") :]
    return section[
        section.index("```bash\n") + 8 : section.index("```", section.index("```bash") + 7)
    ]


class Load:
    """One client sending completions back to back; every status and latency is kept."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.results: list[tuple[float, int, float, str]] = []  # (t, status, seconds, detail)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=120) as http:
            while not self._stop.is_set():
                t0 = time.monotonic()
                body = {"model": self.model, "prompt": "Restart a pod safely.", "max_tokens": 8}
                try:
                    r = http.post(f"{self.url}/v1/completions", json=body)
                    status, detail = r.status_code, "" if r.status_code == 200 else r.text[:300]
                except httpx.HTTPError as exc:
                    status, detail = 0, repr(exc)
                self.results.append((t0, status, time.monotonic() - t0, detail))
                self._stop.wait(0.2)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def latencies(self, since: float, until: float) -> list[float]:
        return [s for t, code, s, _ in self.results if since <= t < until and code == 200]

    def failures(self) -> list[tuple[float, int, float, str]]:
        return [r for r in self.results if r[1] != 200]


def _run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    assert done.returncode == 0, (
        f"{cmd} -> {done.returncode}\n{done.stdout[-4000:]}\n" + (done.stderr[-4000:])
    )
    return done


def _seed_corrections(home: Path, domain: str, n: int) -> None:
    """Requests answered in ``domain`` and corrected by their users, logged as the gateway
    logs them (the store is the one the running app writes to)."""
    from qlp_ray.data.capsules import load_capsules, sample_path
    from qlp_ray.store.database import FeedbackStore

    store = FeedbackStore.from_config(load_config(environ={"QLP_HOME": str(home)}))
    for s in load_capsules(sample_path(domain, "train"))[:n]:
        rid = store.record_request(model="auto", domain=domain, prompt=s.instruction,
                                   response="not sure", latency_ms=50.0)  # fmt: skip
        store.record_feedback(rid, "thumbs", -1)
        store.record_feedback(rid, "correction", payload={"text": s.output})


def _install(tmp: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """The wheel installed into a fresh venv; (its bin dir, its bundled samples dir)."""
    wheel = build_wheel(tmp)
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in SHIPPED:
        assert shipped in names, f"{shipped} missing from {wheel.name}"
    venv_bin = fresh_venv(tmp, wheel) / "bin"
    probe = _run([str(venv_bin / "python"), "-c", (
        "import qlp_ray, qlp_ray.core.paths as p, qlp_ray.serve.telemetry.cost as c\n"
        "print(qlp_ray.__file__); print(p.source_checkout()); print(c.DEFAULT_PRICES_FILE)"
    )], env, 120, tmp / "cwd").stdout.split("\n")  # fmt: skip
    package = Path(probe[0]).parent
    assert package.is_relative_to(venv_bin.parent), f"qlp_ray imported from {probe[0]}"
    assert probe[1] == "None"
    assert Path(probe[2]).is_relative_to(package) and probe[2].endswith("_configs/prices.yaml")
    dumped = _run([str(venv_bin / "qlp"), "config", "dump"], env, 120, tmp / "cwd").stdout
    assert dumped == (REPO / "configs" / "default.yaml").read_text()
    return venv_bin, package / "data" / "samples"


def _clean_shell(tmp: Path, home: Path, venv_bin: Path, **extra: str) -> dict[str, str]:
    """A new user's shell: the installed ``qlp`` first on PATH, own HOME (where Ray's token
    goes) and TMPDIR (where qlp's cluster lives), no Ray variables at all."""
    env = user_env(home, "", venv_bin, HOME=str(tmp / "user"), TMPDIR=str(tmp), **extra)
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        env.pop(key, None)
    env["PATH"] = f"{venv_bin}:{MAIN_BIN}:/usr/bin:/bin"
    return env


def _listeners(marker: str) -> set[tuple[str, int, str]]:
    """(address, port, process) of every listening socket of the cluster's processes."""
    import psutil

    pids: set[int] = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                pids.add(proc.pid)
                pids.update(c.pid for c in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    out = set()
    for conn in psutil.net_connections("inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                out.add((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return out


def test_installed_wheel_serves_and_trains_three_ways_while_serving(qlp_home: Path):
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="qlp2c_"))  # short: Ray's socket paths live under it
    home, cwd = tmp / "home", tmp / "cwd"
    for d in (home, cwd, tmp / "user"):
        d.mkdir()
    (home / "models").symlink_to(qlp_home / "models", target_is_directory=True)
    shutil.copytree(qlp_home / "keys", home / "keys")
    port = free_port()
    dash_port = free_port(8265)  # the README's, unless something else holds it
    dashboard = f"http://127.0.0.1:{dash_port}"
    try:
        venv_bin, samples = _install(tmp, user_env(home, secrets.token_hex(8)))
        env = _clean_shell(tmp, home, venv_bin, QLP_SERVE__PORT=str(port),
                           QLP_CLUSTER__NUM_CPUS="2", QLP_CLUSTER__DASHBOARD_PORT=str(dash_port),
                           QLP_JOBS__DASHBOARD_ADDRESS=dashboard, QLP_TRAIN__STEPS=STEPS,
                           QLP_SERVE__HEALTH_TIMEOUT_S="400",
                           # the job routes below send no key: the loopback opt-out
                           QLP_SERVE__INSECURE_OPEN_ADMIN="true")  # fmt: skip
        qlp = str(venv_bin / "qlp")
        try:
            served = _run([qlp, "serve"], env, 600, cwd)
            out = " ".join(served.stdout.split())
            assert "placement: 2 CPUs: serving reserves 1 (" in out, out
            assert "1 CPU free for training" in out, out
            assert "export RAY_AUTH_MODE=token" in served.stdout.splitlines(), out
            assert (tmp / "user" / ".ray" / "auth_token").is_file()
            [own] = tmp.glob("qlp-ray-*")  # qlp's cluster, in the user's TMPDIR
            _check_the_cluster_is_closed(own, env, port, dash_port, cwd)
            shown = _run([qlp, "devices", "--placements", "--json"], env, 120, cwd)
            serving = json.loads(shown.stdout)["serve"]
            assert serving["cpus"] == {"compositor": 0.666, "router": 0.333}, serving
            url = f"http://127.0.0.1:{port}"
            _first_completion(url)
            _train_three_ways_while_serving(url, home, dashboard, env, tmp / "src", samples,
                                            t_start)  # fmt: skip
            stopped = _run([qlp, "shutdown", "--stop-ray"], env, 180, cwd)
            assert "Ray cluster stopped" in stopped.stdout, stopped.stdout
            assert not _listeners(str(own)), "qlp shutdown --stop-ray left processes behind"
        finally:
            for leftover in tmp.glob("qlp-ray-*"):
                kill_leftovers(str(leftover))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_the_cluster_is_closed(own: Path, env, port: int, dash_port: int, cwd: Path) -> None:
    """HTTP and the dashboard listen on loopback only; without the token Ray refuses."""
    listening = _listeners(str(own))
    for wanted in (port, dash_port):
        addresses = {ip for ip, p, _ in listening if p == wanted}
        assert addresses == {"127.0.0.1"}, (wanted, sorted(listening))
    others = sorted((ip, p, name) for ip, p, name in listening if ip not in ("127.0.0.1", "::1"))
    print(f"\nRay's own listeners on all interfaces (token-protected): {others}")
    refused = subprocess.run([str(MAIN_BIN / "ray"), "job", "list", "--address",
                              f"http://127.0.0.1:{dash_port}"], env=env, cwd=cwd,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()


def _first_completion(url: str) -> None:
    """The installed package answers a completion on the base model."""
    models = httpx.get(f"{url}/v1/models", timeout=60)
    assert models.status_code == 200, models.text
    (base,) = [m["id"] for m in models.json()["data"] if m["kind"] == "base"]
    r = httpx.post(f"{url}/v1/completions", timeout=120, json={
        "model": base, "prompt": "Write a SQL query that counts orders per day.",
        "max_tokens": 8,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == base and body["choices"][0]["text"].strip(), body
    assert body["usage"]["completion_tokens"] >= 1


def _train_three_ways_while_serving(url, home, dashboard, env, src, samples, t_start) -> None:
    models = httpx.get(f"{url}/v1/models", timeout=60).json()["data"]
    (base,) = [m["id"] for m in models if m["kind"] == "base"]
    load = Load(url, base).start()
    time.sleep(5)  # idle latency first
    t_busy = time.monotonic()
    try:
        # 1. REST fine-tuning job (submitted by the gateway to the Ray Jobs API)
        body = {"model": "devops", "training_file": str(samples / "devops.train.jsonl"),
                "hyperparameters": {"n_steps": int(STEPS)}}  # fmt: skip
        r = httpx.post(f"{url}/v1/fine-tuning/jobs", json=body, timeout=60)
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 420
        placements = []
        while time.monotonic() < deadline:
            job = httpx.get(f"{url}/v1/fine-tuning/jobs/{job_id}", timeout=60).json()
            if job.get("placement"):
                placements.append(job["placement"])
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(1)
        assert job["status"] == "succeeded", job
        # while it ran, the job showed where the scheduler put it
        assert any(p["state"] == "placed" and p["workers"] == 1 for p in placements), placements
        listed = httpx.get(f"{url}/v1/fine-tuning/jobs", timeout=60).json()["data"]
        assert job_id in [j["id"] for j in listed]
        r = httpx.delete(f"{url}/v1/fine-tuning/jobs/{job_id}", timeout=60)
        assert r.status_code == 200 and r.json()["cancel_requested"] is False  # finished
        assert httpx.get(f"{url}/v1/fine-tuning/jobs/nope", timeout=60).status_code == 404

        # 2. the README's `ray job submit` block, run verbatim by bash in a source tree
        block = readme_job_block()
        assert "export RAY_AUTH_MODE=token" in block and "ray job submit" in block, block
        if dashboard != README_DASHBOARD:  # port 8265 was taken on this machine
            block = block.replace(README_DASHBOARD, dashboard)
        done = _run(["bash", "-euc", block], env, 420, src)
        assert "succeeded" in done.stdout.lower(), done.stdout[-2000:]

        # 3. `qlp improve --once` on corrections users sent
        _seed_corrections(home, "frontend", 24)
        improve_env = {**env, "QLP_IMPROVE__MIN_NEW_SAMPLES": "10", "QLP_IMPROVE__MARGIN": "0",
                       "QLP_TRAIN__STEPS": STEPS}  # fmt: skip
        qlp = str(Path(env["PATH"].split(":")[0]) / "qlp")  # the installed one
        done = _run([qlp, "improve", "--once", "--domain", "frontend", "--json"],
                    improve_env, 420, src)  # fmt: skip
        [outcome] = json.loads(done.stdout)  # --json: only the JSON on stdout
        assert outcome["action"] == "promoted", outcome
    finally:
        t_done = time.monotonic()
        time.sleep(3)
        load.stop()

    failures = load.failures()
    assert not failures, f"{len(failures)} failed requests while training: {failures[:3]}"
    idle, busy = load.latencies(0, t_busy), load.latencies(t_busy, t_done)
    assert len(idle) >= 3 and len(busy) >= 20, (len(idle), len(busy))

    from qlp_ray.registry.store import Registry

    registry = Registry(load_config(environ={"QLP_HOME": str(home)}))
    for adapter_id in ("devops", "api", "frontend"):
        record = registry.get(adapter_id)
        assert record.signed and registry.verify(adapter_id).signed, (adapter_id, record.problem)
    for adapter_id in ("devops", "api"):  # the REST job's n_steps and train.steps arrived
        assert registry.get(adapter_id).metadata["metrics"]["steps"] == int(STEPS)
    p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
    p95_idle = statistics.quantiles(idle, n=20)[-1] if len(idle) >= 2 else idle[0]
    p95_busy = statistics.quantiles(busy, n=20)[-1]
    print(
        f"\ntrain while serving (2 CPUs): {len(load.results)} requests, 0 failed; idle "
        f"p50 {p50_idle * 1000:.0f} ms / p95 {p95_idle * 1000:.0f} ms ({len(idle)}), while the "
        f"three training paths ran p50 {p50_busy * 1000:.0f} ms / p95 {p95_busy * 1000:.0f} ms "
        f"({len(busy)}): x{p50_busy / p50_idle:.2f} / x{p95_busy / p95_idle:.2f}; whole test "
        f"{time.monotonic() - t_start:.0f} s"
    )
