"""The whole chain through real DVC, in a fresh git repository, logging to a real MLflow sqlite store:
a 2 x 2 attacks x defenses matrix (BadNet and BadCLIP; RVPT and CleanCLIP)."""
import json
import re

import mlflow
import open_clip
import pytest
import torch
import yaml
from conftest import copy_of, run
from safetensors.torch import load_file

from pipeline.stages.evaluate import on_tune_runs
from rvpt import attacks

STAGES = {"download", "pretrain", "poison", "sample", "tune", "scan", "evaluate", "report"}
CELLS = [("badnet", "rvpt"), ("badnet", "cleanclip"), ("badclip", "rvpt"), ("badclip", "cleanclip")]


def test_a_cells_ranking_figures_are_taken_against_its_attacks_undefended_model():
    rows = [{"attack": "a", "defense": "clean_model", "kind": "none", "clean_accuracy": 0.9, "attack_success_rate": 0.1},
            {"attack": "a", "defense": "none", "kind": "none", "clean_accuracy": 0.8, "attack_success_rate": 0.9,
             "implanted": True},
            {"attack": "a", "defense": "rvpt", "kind": "prompt", "clean_accuracy": 0.7, "attack_success_rate": 0.2,
             "target_rate": 0.05, "implanted": True},
            {"attack": "b", "defense": "rvpt", "kind": "prompt", "clean_accuracy": 0.6, "attack_success_rate": 0.3}]
    upstream = {"upstream.tune.a-none": "r1", "upstream.tune.a-rvpt": "r2", "upstream.tune.b-rvpt": "r3"}
    metrics, tags = on_tune_runs(rows, upstream)
    assert metrics["r1"] == {"test_clean_accuracy": 0.8, "test_attack_success_rate": 0.9, "test_ca_drop": 0.0,
                             "test_asr_reduction": 0.0}
    assert metrics["r2"]["test_ca_drop"] == pytest.approx(0.1) and metrics["r2"]["test_asr_reduction"] == pytest.approx(0.7)
    assert metrics["r2"]["test_target_rate"] == 0.05
    assert metrics["r3"] == {"test_clean_accuracy": 0.6, "test_attack_success_rate": 0.3}  # b has no undefended cell
    assert tags == {"r1": {"implanted": "true"}, "r2": {"implanted": "true"}}


def test_every_cell_row_holds_its_metrics_and_the_scanners_verdict(reproduced):
    project = reproduced
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert [(r["attack"], r["defense"]) for r in rows] == \
        [("badnet", "clean_model"), ("badclip", "clean_model"), *CELLS]
    for row in rows:
        # The table, DVC's metric files and the probe's mean are three views of one measurement.
        for metric, key in (("ca", "clean_accuracy"), ("asr", "attack_success_rate")):
            shown = json.loads((project / "results" / metric / f"{row['defense']}.json").read_text())
            assert shown[row["attack"]] == pytest.approx(row[key], abs=1e-6), (row["attack"], row["defense"], key)
        assert set(row["nuisance_probe"]) == {"colour", "texture", "scale", "tilt", "offset_x", "offset_y"}
        assert row["nuisance_probe_accuracy"] == pytest.approx(sum(row["nuisance_probe"].values()) / 6)
        # The scanner's verdict on the row's model, made without the trigger: a defended cell gets only
        # the residual ASR of its backdoored model's inverted trigger (scan.defended: residual).
        assert row["target"] == "three"
        if row["defense"] == "clean_model":
            assert isinstance(row["scan_flagged"], bool) and row["scan_flagged"] == (row["scan_target"] is not None)
            assert row["scan_target"] in (None, "zero", "one", "two", "three")
            assert row["scan_residual_success"] is None
        else:
            assert row["scan_flagged"] is None and row["scan_anomaly_index"] is None
            assert 0 <= row["scan_residual_success"] <= 1
    by_cell = {(r["attack"], r["defense"]): r for r in rows}
    assert by_cell["badnet", "rvpt"]["trainable_params"] == 2 * 4 * 32 == by_cell["badclip", "rvpt"]["trainable_params"]
    assert by_cell["badnet", "cleanclip"]["trainable_params"] > 100 * by_cell["badnet", "rvpt"]["trainable_params"]
    assert by_cell["badnet", "rvpt"]["shots"] == 4


def test_the_report_and_plots_render_offline_with_the_scans(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    report = (project / "results" / "report.html").read_text()
    assert "| rvpt |" not in report and "<td>rvpt</td>" in report and "data:image/png;base64," in report
    # Renders offline: nothing is fetched (links to the runs' MLflow pages are only links).
    assert not re.search(r"src=[\"']?https?:", report) and "<script" not in report
    assert report.index("Verdict") < report.index("Test ASR of every attack") < report.index("ASR % (CA %)")  # answer first
    assert re.search(r'<a href="http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}">', report)
    assert {p.name for p in (project / "results" / "plots").iterdir()} >= {"asr.png", "ca.png", "loss_pretrain.png"}
    assert "Trigger inversion, without the trigger" in report and "the true trigger (target three)" in report
    scans = json.loads((project / "scans" / "scans.json").read_text())["models"]
    assert set(scans) == {"clean_model", "badnet", "badclip", *(f"{a}-{d}" for a, d in CELLS)}
    assert {p.stem for p in (project / "scans").glob("*.png")} == {"clean_model", "badnet", "badclip"}
    assert "## Trigger inversion without the trigger" in (project / "results" / "summary.md").read_text()
    run(["dvc", "plots", "show", "-o", "dvc_plots"], project)
    page = (project / "dvc_plots" / "index.html").read_text()
    # vega inlined (.dvc/plots.html): the curves render, and nothing is loaded from a CDN
    assert "asr.png" in page and "<img" in page and "vegaEmbed" in page and not re.search(r"<script[^>]+src=", page)
    table = (project / "results" / "summary.md").read_text()
    assert "| clean model (never poisoned) |" in table and "| rvpt |" in table and "| cleanclip |" in table


def test_badclip_optimises_its_patch_and_cleanclip_writes_a_local_dir_model(reproduced):
    project = reproduced
    # The optimised BadCLIP patch differs from its random initialisation (the same attack, built unoptimised).
    params = yaml.safe_load((project / "params.yaml").read_text())
    initial = attacks.build("badclip", params["data"]["image_size"], seed=params["seed"],
                            **params["attacks"]["badclip"]["options"]).patch
    optimised = load_file(project / "data" / "poisoned" / "badclip" / "trigger.safetensors")["patch"]
    assert optimised.shape == initial.shape and (optimised - initial).abs().max() > 1e-3
    losses = (project / "data" / "poisoned" / "badclip" / "trigger_loss.csv").read_text().split()[1:]
    assert len(losses) == params["attacks"]["badclip"]["optimise"]["steps"]
    # CleanCLIP's defended model is an ordinary open_clip local-dir model.
    assert (project / "defended" / "cleanclip" / "badclip" / "open_clip_model.safetensors").exists()



def test_mlflow_holds_one_run_per_stage_and_cell_under_one_parent(reproduced, monkeypatch):
    project = reproduced
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    by_cell = {(r["attack"], r["defense"]): r for r in rows}
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    # A classic (not GenAI) experiment with a description; no run carries an empty tag.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"].startswith("rvpt: ")
    assert all(value != "" for r in runs for value in r.data.tags.values())
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags["rvpt.stage"], []).append(r)
    assert set(by_stage) == STAGES | {"pipeline"}
    # One parent run groups the pipeline's stage runs, so `mlflow ui` folds them under it.
    [parent] = by_stage.pop("pipeline")
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for stage in by_stage.values() for r in stage)
    assert len(by_stage["tune"]) == 4 and len(by_stage["pretrain"]) == 3 and len(by_stage["poison"]) == 2
    assert len({r.data.tags["rvpt.pipeline"] for r in runs}) == 1
    tunes = {(r.data.tags["attack"], r.data.tags["defense"]): r for r in by_stage["tune"]}
    assert set(tunes) == set(CELLS)
    tune = tunes["badclip", "rvpt"]
    assert tune.data.params["defense.alpha"] == "2.0" and tune.data.params["shots"] == "4"
    assert {"loss", "ce", "fr", "val_attack_success_rate"} <= set(tune.data.metrics)
    # What describes a run rather than measures it is a param, so the runs table never plots it.
    assert tune.data.params["trainable_params"] == str(2 * 4 * 32) and tune.data.params["resumed_from_step"] == "0"
    assert not {"shots", "defense_seed", "trainable_params", "resumed_from_step"} & set(tune.data.metrics)
    assert tune.info.run_name == "tune@badclip-rvpt" and tune.data.tags["dvc.stage"] == "tune@rvpt"  # a run per cell
    assert tune.data.tags["upstream.pretrain"] in {r.info.run_id for r in by_stage["pretrain"]}
    evaluate = by_stage["evaluate"][0]
    assert evaluate.data.metrics["badclip.rvpt.attack_success_rate"] == by_cell["badclip", "rvpt"]["attack_success_rate"]
    # Each cell's test figures also sit on its own tune run, so the runs table ranks the defenses;
    # the evaluate run holds the matrix as a table, and its main table as its description.
    for (attack, defense), cell_run in tunes.items():
        assert cell_run.data.metrics["test_attack_success_rate"] == by_cell[attack, defense]["attack_success_rate"]
        assert cell_run.data.metrics["test_clean_accuracy"] == by_cell[attack, defense]["clean_accuracy"]
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # undone after the test, as set_... sets it
    mlflow.set_tracking_uri(client.tracking_uri)  # a client's load_table still searches the global store
    try:
        table = client.load_table(experiment.experiment_id, "matrix.json", run_ids=[evaluate.info.run_id])
    finally:
        mlflow.set_tracking_uri(previous)
    assert list(zip(table["attack"], table["defense"])) == [(r["attack"], r["defense"]) for r in rows]
    description = evaluate.data.tags["mlflow.note.content"]
    assert description.startswith("## Verdict") and "## ASR % (CA %) on the test split" in description
    scan = by_stage["scan"][0]
    assert scan.data.metrics["badnet-rvpt.scan_residual_success"] == by_cell["badnet", "rvpt"]["scan_residual_success"]
    assert scan.data.tags["upstream.tune.badnet-rvpt"] == tunes["badnet", "rvpt"].info.run_id
    artifacts = {a.path for a in client.list_artifacts(tune.info.run_id, "defended")}
    assert "defended/prompts.safetensors" in artifacts
    # The backdoored model is logged once, by its pretrain run; the cells' registered models refer to it.
    [badclip_pretrain] = [r for r in by_stage["pretrain"] if r.data.tags["attack"] == "badclip"]
    assert "model/open_clip_model.safetensors" in {a.path for a in client.list_artifacts(badclip_pretrain.info.run_id,
                                                                                         "model")}



def test_dvc_metrics_show_prints_table_one_and_a_second_repro_runs_nothing(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    by_cell = {(r["attack"], r["defense"]): r for r in rows}
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    logged = len(client.search_runs([experiment.experiment_id]))
    # `dvc metrics show` prints Table 1: a row per (metric, defense) file, a column per attack.
    shown = run(["dvc", "metrics", "show"], project, env={"COLUMNS": "120"}).stdout.splitlines()
    assert shown[0].split() == ["Path", "badclip", "badnet"]
    assert {line.split()[0] for line in shown[1:]} == {f"results/{m}/{d}.json" for m in ("asr", "ca")
                                                       for d in ("clean_model", "rvpt", "cleanclip")}
    rvpt_asr = next(line for line in shown if line.startswith("results/asr/rvpt.json")).split()
    assert float(rvpt_asr[2]) == pytest.approx(by_cell["badnet", "rvpt"]["attack_success_rate"], abs=1e-5)

    # Nothing changed: a second repro runs nothing and logs no new run.
    second = run(["dvc", "repro"], project)
    assert "rvpt stage" not in second.stdout
    assert len(client.search_runs([experiment.experiment_id])) == logged



def test_changed_settings_rerun_what_they_touch(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    scans = json.loads((project / "scans" / "scans.json").read_text())["models"]
    # scan.defended: full also scans each defended model itself; the residual ASRs stay as they were.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["scan"]["defended"] = "full"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "scan"], project)
    full = json.loads((project / "scans" / "scans.json").read_text())["models"]
    for attack, defense in CELLS:
        cell = f"{attack}-{defense}"
        assert full[cell]["residual_success"] == scans[cell]["residual_success"]
        assert isinstance(full[cell]["flagged"], bool) and (project / "scans" / f"{cell}.png").exists()
    run(["git", "checkout", "params.yaml"], project)

    # Changing one attack's parameters reruns only that attack's poisoning and pretraining, then
    # every defense's tune stage (which trains only that attack's cells: test_memo runs such a
    # rerun) and the table; DVC's plan says so without running it.
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("rate: 0.05", "rate: 0.04", 1))
    third = run(["dvc", "repro", "--dry"], project).stdout
    assert "rvpt stage poison --attack badnet" in third and "--attack badclip" not in third
    assert "tune --defense rvpt" in third and "tune --defense cleanclip" in third and "rvpt stage evaluate" in third

    # A manual re-run of one stage with an override changes what evaluate reports.
    run(["rvpt", "stage", "tune", "--attack", "badnet", "--defense", "rvpt", "-S", "sample.shots=2"], project)
    run(["rvpt", "stage", "evaluate"], project)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert {(r["attack"], r["defense"]): r for r in rows}["badnet", "rvpt"]["shots"] == 2


def test_provenance_names_the_machine_in_the_summary_the_report_and_every_run(reproduced):
    made_by = json.loads((reproduced / "results" / "summary.json").read_text())["provenance"]
    params = yaml.safe_load((reproduced / "params.yaml").read_text())
    assert made_by["threads"] == str(params["threads"]) and made_by["device"] == "cpu"
    assert made_by["precision"] == "fp32" and made_by["torch"] == torch.__version__
    assert made_by["open_clip"] == open_clip.__version__ and made_by["cpu"]
    assert f"<td>{made_by['cpu']}</td>" in (reproduced / "results" / "report.html").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{reproduced / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    staged = [r for r in runs if r.data.tags["rvpt.stage"] != "pipeline"]
    assert all(r.data.tags["rvpt.cpu"] == made_by["cpu"] and r.data.tags["rvpt.device"] == "cpu" for r in staged)
    assert all(r.data.metrics["peak_rss_gib"] > 0.1 for r in staged)  # each stage process holds torch at least
