"""`mlflow server` over the store the smoke pipeline filled, driven in headless Chromium: the
experiment page lists the pipeline's runs under its parent run, and a tune run's artifacts
include its prompts."""
import shutil

import mlflow
import pytest
from conftest import copy_of, mlflow_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian package `chromium`; "
                                                         ".ci/run installs it)")
# Chromium's own background traffic is refused on this closed network; these flags turn it off.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def served_project(reproduced, tmp_path):
    return copy_of(reproduced, tmp_path)  # the server may write to its store while other tests copy it


@pytest.fixture
def ui(served_project):
    with mlflow_server(f"sqlite:///{served_project / 'mlflow.db'}", served_project) as url:
        yield url


def test_mlflow_ui_lists_the_pipeline_runs_and_the_prompts_artifact(served_project, ui):
    from playwright.sync_api import expect, sync_playwright

    client = mlflow.MlflowClient(f"sqlite:///{served_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    tune = next(r for r in runs if r.data.tags.get("dvc.stage") == "tune@badnet-rvpt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs")
        # The stage runs are folded under their pipeline's parent run; its expander opens them.
        parent = page.locator("[role=gridcell]", has_text="pipeline ")
        expect(parent.first).to_be_visible(timeout=60_000)
        parent.first.get_by_role("button").click()
        for name in ("tune@badnet-rvpt", "tune@badclip-cleanclip", "evaluate", "pretrain_clean", "download"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{tune.info.run_id}/artifacts")
        expect(page.get_by_text("prompts.safetensors").first).to_be_visible(timeout=60_000)
        browser.close()
