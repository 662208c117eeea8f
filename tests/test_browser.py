"""`mlflow server` over the store the smoke pipeline filled, driven in headless Chromium: the
experiment page lists the pipeline's runs, and a tune run's artifacts include its prompts."""
import shutil
import socket
import subprocess
import time
import urllib.request

import mlflow
import pytest
from conftest import BIN

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian package `chromium`; "
                                                         ".ci/run installs it)")
# Chromium's own background traffic is refused on this closed network; these flags turn it off.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ui(reproduced):
    port = free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{reproduced / 'mlflow.db'}", "--workers", "1"],
                              cwd=reproduced, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("mlflow server did not come up within 90 s")
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_mlflow_ui_lists_the_pipeline_runs_and_the_prompts_artifact(reproduced, ui):
    from playwright.sync_api import expect, sync_playwright

    client = mlflow.MlflowClient(f"sqlite:///{reproduced / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    tune = next(r for r in runs if r.data.tags.get("dvc.stage") == "tune@badnet-rvpt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs")
        for name in ("tune@badnet-rvpt", "tune@badclip-cleanclip", "evaluate", "pretrain_clean", "download"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{tune.info.run_id}/artifacts")
        expect(page.get_by_text("prompts.safetensors").first).to_be_visible(timeout=60_000)
        browser.close()
