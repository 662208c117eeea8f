"""`mlflow server` over the store the smoke pipeline filled, driven in headless Chromium: the
experiment page lists the pipeline's runs under its parent run, a tune run's artifacts include
its prompts, the runs table and the compare view rank the tune runs by test CA and ASR, the
evaluate run shows the matrix, and a defended cell is a registered model. With RVPT_SCREENSHOTS
naming a folder, the views are saved there (results/screenshots/ holds a set)."""
import json
import os
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
    tune = next(r for r in runs if r.info.run_name == "tune@badnet-rvpt")
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
def test_mlflow_ui_ranks_the_cells_and_holds_the_table_and_the_models(served_project, ui):
    """The runs table shows each tune run's test CA and ASR (columns picked as a user picks them),
    the evaluate run shows the matrix, and each defended cell is a registered model version."""
    from playwright.sync_api import expect, sync_playwright

    client = mlflow.MlflowClient(f"sqlite:///{served_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    tune, evaluate = runs["tune@badnet-rvpt"], runs["evaluate"]
    shots = os.environ.get("RVPT_SCREENSHOTS")  # a folder: the views are saved there as PNGs
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(f"{ui}/#/experiments/{experiment}/runs")
        page.get_by_role("button", name="Close").click()  # MLflow's assistant panel
        page.get_by_role("button", name="Columns").click()
        page.get_by_placeholder("Search columns").fill("test_")
        page.locator(".du-bois-light-tree-treenode", has_text="Metrics (").first.click()  # every test_ metric
        page.keyboard.press("Escape")
        page.locator("[role=gridcell]", has_text="pipeline ").first.get_by_role("button").click()
        for metric in ("test_clean_accuracy", "test_attack_success_rate"):
            expect(page.get_by_role("columnheader", name=metric).first).to_be_visible(timeout=60_000)
            # ag-grid splits a row into its pinned and scrolled parts; both carry the run id.
            value = page.locator(f"[role=row][row-id='{tune.info.run_id}'] [col-id*='{metric}']")
            expect(value).to_have_text(str(tune.data.metrics[metric]), timeout=60_000)  # JS prints a float as repr
        if shots:
            page.screenshot(path=f"{shots}/mlflow-runs-table.png")

        tunes = [r.info.run_id for stage, r in runs.items() if stage and stage.startswith("tune@")]
        page.goto(f"{ui}/#/compare-runs?runs={json.dumps(tunes)}&experiments={json.dumps([experiment])}")
        page.get_by_role("button", name="Clear All").click()  # the plot's default picks rank nothing
        parameters, metrics = page.get_by_role("combobox").nth(0), page.get_by_role("combobox").nth(1)
        for box, names in ((parameters, ("attack_name", "defense_name")),
                           (metrics, ("test_attack_success_rate", "test_clean_accuracy"))):
            for name in names:
                box.click()
                box.fill(name)
                page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        expect(page.locator("svg", has_text="test_attack_success_rate").first).to_be_visible(timeout=60_000)
        if shots:
            page.get_by_text("Comparing 4 Runs").scroll_into_view_if_needed()
            page.screenshot(path=f"{shots}/mlflow-compare-tune-runs.png")

        page.goto(f"{ui}/#/experiments/{experiment}/runs/{evaluate.info.run_id}")
        expect(page.get_by_text("ASR % (CA %) on the test split").first).to_be_visible(timeout=60_000)
        page.goto(f"{ui}/#/experiments/{experiment}/runs/{evaluate.info.run_id}/artifacts/matrix.json")
        expect(page.get_by_text("cleanclip").first).to_be_visible(timeout=60_000)

        page.goto(f"{ui}/#/models/rvpt-badnet-rvpt")
        expect(page.get_by_text("Version 1").first).to_be_visible(timeout=60_000)
        if shots:
            page.goto((served_project / "results" / "report.html").as_uri())
            page.screenshot(path=f"{shots}/report.png", full_page=True)
        browser.close()
