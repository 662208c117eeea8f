"""What a researcher sees, in headless Chromium: the page `rvpt ui` opens (the runs view, not the
GenAI overview, with the defended cells ranked by ASR reduction), the parent pipeline run's
matrix, a registered model that says whether its backdoor survived, and the report's first
screen. With RVPT_SCREENSHOTS naming a folder, each view is saved there (docs/screenshots/ holds
a set, taken this way)."""
import json
import os
import shutil
import subprocess
import time

import mlflow
import pytest
import yaml
from conftest import BIN, copy_of, environment, free_port, run

from pipeline.report.summary import defense_means

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian package `chromium`; "
                                                         ".ci/run installs it)")
# Chromium's own background traffic is refused on this closed network; these flags turn it off.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
GENAI = ("Token Usage", "Detect Issues", "Traces")  # what MLflow 3's GenAI overview shows


@pytest.fixture
def opened(reproduced, tmp_path):
    """`rvpt ui` on a copy of the smoke project with the undefended cells added, which give each
    defended cell its ASR reduction: (project, the URL it printed)."""
    project = copy_of(reproduced, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["run"]["defenses"] = ["none", *params["run"]["defenses"]]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], project)
    port = free_port()
    server = subprocess.Popen([str(BIN / "rvpt"), "ui", "--port", str(port)], cwd=project, env=environment(),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = server.stdout.readline().strip()
        deadline = time.monotonic() + 90
        while subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/health"], capture_output=True).returncode:
            assert time.monotonic() < deadline and server.poll() is None, "rvpt ui did not come up within 90 s"
            time.sleep(0.5)
        yield project, url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_rvpt_ui_opens_the_ranked_defended_cells_and_the_registry_explains_itself(opened):
    from playwright.sync_api import expect, sync_playwright

    project, url = opened
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment])
    parent = next(r for r in runs if r.data.tags["rvpt.stage"] == "pipeline")
    best = max((r for r in runs if r.data.tags["rvpt.stage"] == "tune"),
               key=lambda r: r.data.metrics["test_asr_reduction"])
    assert url.startswith("http://127.0.0.1:") and "workflowType=machine_learning" in url
    shots = os.environ.get("RVPT_SCREENSHOTS")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(url)
        # The runs view with the ranking columns, the best cell first; not the GenAI overview.
        expect(page.get_by_role("columnheader", name="test_asr_reduction").first).to_be_visible(timeout=60_000)
        for column in ("test_attack_success_rate", "test_clean_accuracy", "test_ca_drop"):
            expect(page.get_by_role("columnheader", name=column).first).to_be_visible()
        first = page.locator("[role=row][row-id]").first
        expect(first).to_have_attribute("row-id", best.info.run_id, timeout=60_000)
        assert all(page.get_by_text(text, exact=True).count() == 0 for text in GENAI[:2])
        expect(page.get_by_text("pretrain_clean", exact=True)).to_have_count(0)  # only the defended cells
        if shots:
            page.screenshot(path=f"{shots}/ui-ranked-cells.png")

        page.goto(f"{url.split('/#')[0]}/#/experiments/{experiment}/runs/{parent.info.run_id}/artifacts/matrix")
        expect(page.get_by_text("asr.png").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("matrix.json").first).to_be_visible()
        if shots:
            page.screenshot(path=f"{shots}/ui-pipeline-matrix.png")

        page.goto(f"{url.split('/#')[0]}/#/models/rvpt-badnet-rvpt/versions/1")
        expect(page.get_by_text("Backdoor", exact=False).first).to_be_visible(timeout=60_000)
        if shots:
            page.screenshot(path=f"{shots}/ui-registered-model.png")

        page.goto((project / "results" / "report.html").as_uri())
        expect(page.get_by_role("heading", name="Verdict")).to_be_visible()
        if shots:
            page.screenshot(path=f"{shots}/report-first-screen.png")
        browser.close()
    # The parent run carries the matrix, and per defense its mean over the attacks that implanted.
    assert {"matrix/matrix.json", "matrix/asr.png"} <= {f.path for f in client.list_artifacts(parent.info.run_id, "matrix")}
    summary = json.loads((project / "results" / "summary.json").read_text())
    means = {k: v for k, v in parent.data.metrics.items() if k.endswith((".mean_asr", ".mean_ca"))}
    assert means == pytest.approx(defense_means(summary["rows"], ["none", "rvpt", "cleanclip"]))
    version = client.get_model_version("rvpt-badnet-rvpt", "1")
    assert version.description.split(":")[0] in ("Backdoor SURVIVED", "Backdoor removed") or \
        version.description.startswith("Its attack did not implant")
    assert {"attack", "defense", "undefended", "implanted", "backdoor_survived"} <= set(version.tags)
