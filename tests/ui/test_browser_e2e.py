"""The web UI end to end in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by Selenium) against a real Serve app on the session's Ray cluster.

``qlp ui`` serves the Streamlit app; the browser imports a JSONL file in step 1, estimates in
step 2, launches a real fine-tuning job in step 3 (the gateway submits ``qlp train`` to the
Ray Jobs API; a few steps on the built-in tiny model), watches the loss curve render in
step 4 until the signed adapter is registered, reads why a second (wrong-domain) job
failed, and finds the new adapter in the admin console.
Screenshots go to ``<tmp_path>/screenshots`` (their paths are printed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qlp_ray.client import Client
from qlp_ray.core.config import REPO_ROOT, load_config
from tests.helpers.ray_start import SERVE_PORT, deployed, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ADMIN_KEY = "ui-admin-key"
SAMPLES = REPO_ROOT / "qlp_ray" / "data" / "samples"
N_ROWS = 20  # 17 train + 3 held-out; 1 epoch at batch 8 = 3 steps
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1400,1000")  # fmt: skip

if not (CHROMIUM and DRIVER):
    pytest.skip(
        "Debian chromium and chromium-driver are not installed (scripts/ci_chromium.sh "
        "installs them): the browser test needs a real Chromium",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory, qlp_home, ray_session):
    """A fresh home with the session's built tiny base model, keys, an empty registry, and
    the app deployed with an admin key and the session's Jobs API."""
    from qlp_ray.models.tiny import tiny_model_dir
    from qlp_ray.registry.signing import init_keys

    home = tmp_path_factory.mktemp("ui_e2e")
    built = tiny_model_dir(load_config(environ={"QLP_HOME": str(qlp_home)}))
    cfg = load_config(
        overrides={
            "paths": {"home": str(home)},
            "serve": {"port": SERVE_PORT, "app_name": "qlp_ui_e2e", "admin_key": ADMIN_KEY,
                      "compositor_num_cpus": 0.5, "router_num_cpus": 0.25},
            "jobs": {"dashboard_address": ray_session.dashboard_url},
        },
        environ={},
    )  # fmt: skip
    shutil.copytree(built, tiny_model_dir(cfg))  # the job's `qlp train` finds it built
    init_keys(cfg.paths.keys)
    with deployed(cfg) as url:
        yield {"cfg": cfg, "url": url, "home": home}


@pytest.fixture(scope="module")
def ui_url(platform, tmp_path_factory):
    """``qlp ui`` on a free port, pointed at the app; stopped (its process group) after."""
    port = free_port()
    labelled = tmp_path_factory.mktemp("ui_data")  # the router page's data directory
    rows = [{"text": json.loads(line)["instruction"], "domain": domain}
            for domain in ("api", "devops")
            for line in (SAMPLES / f"{domain}.heldout.jsonl").read_text().splitlines()[:10]
            ]  # fmt: skip
    (labelled / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "QLP_UI_API_KEY": ADMIN_KEY, "QLP_HOME": str(platform["home"]),
           "QLP_UI_DATA_DIRS": str(labelled)}  # fmt: skip
    log = (tmp_path_factory.mktemp("ui_log") / "qlp_ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qlp_ray", "ui", "--url", platform["url"], "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, f"qlp ui exited: {Path(log.name).read_text()}"
            assert time.monotonic() < deadline, "qlp ui did not answer in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """Small helpers over the Streamlit DOM."""

    def __init__(self, driver, shots: Path) -> None:
        self.d, self.shots = driver, shots
        shots.mkdir(parents=True, exist_ok=True)

    def wait(self, condition, timeout_s: float = 60.0, what: str = "condition"):
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.d, timeout_s, poll_frequency=0.25).until(condition)
        except Exception as exc:
            self.shot("timeout")
            raise AssertionError(f"timed out waiting for {what}; page says: "
                                 f"{self.text()[-1500:]}") from exc  # fmt: skip

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.TAG_NAME, "body").text

    def wait_text(self, needle: str, timeout_s: float = 60.0) -> None:
        self.wait(lambda d: needle in self.text(), timeout_s, repr(needle))

    def button(self, label: str):
        from selenium.webdriver.common.by import By

        xpath = f"//button[normalize-space(.)='{label}']"
        return self.wait(lambda d: d.find_element(By.XPATH, xpath), what=f"button {label!r}")

    def click(self, label: str) -> None:
        self.button(label).click()

    def nav(self, path: str, title: str) -> None:
        from selenium.webdriver.common.by import By

        link = self.wait(lambda d: d.find_element(By.CSS_SELECTOR, f'a[href$="/{path}"]'),
                         what=f"link to {path}")  # fmt: skip
        link.click()
        self.wait_text(title)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.d.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path


def test_wizard_trains_an_adapter_the_console_shows(platform, ui_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = Page(browser, tmp_path / "screenshots")
    data = tmp_path / "api.jsonl"
    lines = (SAMPLES / "api.train.jsonl").read_text().splitlines()[:N_ROWS]
    data.write_text("\n".join(lines) + "\n")

    # 1. dataset: import a JSONL file; the API checks every row
    browser.get(ui_url)
    page.wait_text("Step 1 of 4 · Dataset")
    summary = "//summary[contains(., 'Import / export JSONL')]"  # after the method table
    page.wait(lambda d: d.find_element(By.XPATH, summary), what="import expander").click()
    upload = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"),
                       what="file input")  # fmt: skip
    upload.send_keys(str(data))
    page.wait_text("api.jsonl")
    page.click("Import")
    page.wait_text(f"Imported {N_ROWS} rows.")
    page.wait_text("Trainer minimum")
    page.wait_text("Review")
    page.button("Delete row")  # the page has drawn its last element
    assert "Invalid row" not in page.text()
    metrics = page.d.find_element(By.CSS_SELECTOR, "[data-testid=stMetric]")
    page.d.execute_script("arguments[0].scrollIntoView()", metrics)  # counts and the table
    page.shot("01_dataset")

    # 2. configure: defaults (LoRA, 1 epoch), the estimate from the API
    page.nav("configure", "Step 2 of 4 · Configure")
    page.click("Estimate cost and time")
    page.wait_text("Tokens")
    page.wait_text("per million tokens")
    page.shot("02_configure")

    # 3. launch: one click submits the fine-tuning job
    page.nav("launch", "Step 3 of 4 · Launch")
    page.click("Launch training")
    page.wait_text("submitted: follow it in 4. Monitor")
    job_id = page.text().split("Job ", 1)[1].split(" ", 1)[0]
    assert job_id.startswith("ftjob-"), page.text()
    page.shot("03_launch")
    # a job that fails (api rows, devops adapter), submitted beside it through the API
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    upload = json.loads(data.read_text().splitlines()[0])
    with Client(platform["url"], api_key=ADMIN_KEY) as client:
        path = client.upload_file([upload, upload], "wrong-domain.jsonl")["path"]
        failing = client.create_fine_tuning_job("devops", path, n_steps=1)["id"]

    # 4. monitor: the live loss curve, until the signed adapter is registered
    page.nav("monitor", "Step 4 of 4 · Monitor")
    page.wait_text("Registered api@1 (signed)", timeout_s=300)
    charts = "[data-testid=stVegaLiteChart]"
    chart = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, charts), what="loss chart")
    assert chart[0].size["height"] > 100
    page.shot("04_monitor")
    # the failed job, picked in the job list: its reason, not a stack trace
    picker = page.d.find_element(By.CSS_SELECTOR, "[data-testid=stSelectbox] input")
    picker.click()
    picker.send_keys(failing, Keys.ENTER)
    page.wait_text("The job failed:", timeout_s=120)
    assert "not 'devops'" in page.text() and "Traceback" not in page.text()
    page.shot("05_failed_job")
    url = f"{platform['url']}/v1/fine-tuning/jobs/{job_id}/metrics"
    metrics = httpx.get(url, headers=admin, timeout=30).json()
    series = metrics["series"]
    assert len(series["train"]) >= 2 and [p["step"] for p in series["heldout"]] == [0, 3]
    run_dir = Path(metrics["run_dir"])
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert (run_dir / "loss_curve.csv").read_text().startswith("split,step,loss")

    # the console lists the new adapter, signed, with its lineage
    page.nav("adapters", "Adapters")
    page.wait_text("api (api) · current v1 of 1 · all signed")
    page.button("Promote")  # the page has drawn its last element
    page.shot("06_adapters")
    url = f"{platform['url']}/v1/admin/adapters"
    listing = httpx.get(url, headers=admin, timeout=30).json()
    [api] = listing["data"]
    assert api["id"] == "api" and api["versions"][0]["signed"] is True
    assert api["versions"][0]["run"]["run_name"] == job_id

    # the rest of the console answers from the live app: no error box on any page
    with Client(platform["url"]) as client:  # a little traffic for the time series
        served = [client.complete("Paginate GET /orders", model="api", max_tokens=4)
                  for _ in range(3)]  # fmt: skip
    thumbs = {"request_id": served[0].qlp.request_id, "kind": "thumbs", "value": 1}
    assert httpx.post(f"{platform['url']}/v1/feedback", json=thumbs, timeout=30).is_success
    page.nav("analytics", "Analytics & experiments")
    page.wait_text("No experiment defined")
    page.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, charts)) >= 4, what="4 charts")
    over_time = page.d.find_element(By.XPATH, "//h2[contains(., 'Over time')]")
    page.d.execute_script("arguments[0].scrollIntoView()", over_time)
    page.shot("08_analytics_over_time")
    page.nav("router", "Live routing table")
    page.click("Evaluate the live router")
    page.wait_text("Macro-F1")
    matrix = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, charts), what="matrix")
    assert "Rows\n20" in page.text(), page.text()
    page.d.execute_script("arguments[0].scrollIntoView()", matrix[0])
    page.shot("09_router")
    page.nav("devices", "Devices & placements")
    tables = "[data-testid=stDataFrame]"
    page.wait(lambda d: "No placements" in page.text() or "hardware scheduler" in page.text()
              or len(d.find_elements(By.CSS_SELECTOR, tables)) >= 1,
              what="placements or the scheduler message")  # fmt: skip
    page.shot("10_devices")
    page.nav("decisions", "Improve decisions")
    page.wait_text("The improve loop has decided nothing yet")
    page.shot("11_decisions")
    page.nav("serving", "Router, cache & audit")
    page.wait_text("Audit log")
    page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=stJson]"), what="json")
    for phrase in ("The gateway", "Not found", "The platform cannot", "DeltaGenerator"):
        assert phrase not in page.text(), page.text()
    page.shot("07_serving")
