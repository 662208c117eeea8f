"""The whole chain through real DVC, in a fresh git repository, logging to a real MLflow sqlite store:
a 2 x 2 attacks x defenses matrix (BadNet and BadCLIP; RVPT and CleanCLIP)."""
import json

import mlflow
import yaml
from conftest import copy_of, run
from safetensors.torch import load_file

from rvpt import attacks

STAGES = {"download", "pretrain", "poison", "sample", "tune", "scan", "evaluate", "report"}
CELLS = [("badnet", "rvpt"), ("badnet", "cleanclip"), ("badclip", "rvpt"), ("badclip", "cleanclip")]


def test_dvc_repro_smoke_matrix_writes_table_and_mlflow_runs(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert [(r["attack"], r["defense"]) for r in rows] == \
        [("badnet", "clean_model"), ("badclip", "clean_model"), *CELLS]
    for row in rows:
        for key in ("clean_accuracy", "attack_success_rate", "resistivity", "nuisance_probe_accuracy",
                    "transfer_clean_accuracy", "transfer_attack_success_rate"):
            assert -1.0 <= row[key] <= 1.0, (row["attack"], row["defense"], key)
        assert set(row["nuisance_probe"]) == {"colour", "texture", "scale", "tilt", "offset_x", "offset_y"}
        # The scanner's verdict on the row's model, made without the trigger.
        assert isinstance(row["scan_flagged"], bool) and row["target"] == "three"
        assert row["scan_flagged"] == (row["scan_target"] is not None)
        assert row["scan_target"] in (None, "zero", "one", "two", "three")
        assert (row["scan_residual_success"] is None) == (row["defense"] == "clean_model")
    by_cell = {(r["attack"], r["defense"]): r for r in rows}
    assert by_cell["badnet", "rvpt"]["trainable_params"] == 2 * 4 * 32 == by_cell["badclip", "rvpt"]["trainable_params"]
    assert by_cell["badnet", "cleanclip"]["trainable_params"] > 100 * by_cell["badnet", "rvpt"]["trainable_params"]
    assert by_cell["badnet", "rvpt"]["shots"] == 4
    report = (project / "results" / "report.html").read_text()
    assert "| rvpt |" not in report and "<td>rvpt</td>" in report and "data:image/png;base64," in report
    assert "http://" not in report and "https://" not in report and "<script" not in report  # renders offline
    assert {p.name for p in (project / "results" / "plots").iterdir()} >= {"asr.png", "ca.png", "loss_pretrain.png"}
    assert "Trigger inversion, without the trigger" in report and "the true trigger (target three)" in report
    scans = json.loads((project / "scans" / "scans.json").read_text())["models"]
    assert set(scans) == {"clean_model", "badnet", "badclip", *(f"{a}-{d}" for a, d in CELLS)}
    assert all((project / "scans" / f"{name}.png").exists() for name in scans)
    assert "## Trigger inversion without the trigger" in (project / "results" / "summary.md").read_text()
    run(["dvc", "plots", "show", "-o", "dvc_plots"], project)
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "asr.png" in page and "<img" in page and "<script" not in page  # nothing to load from a CDN
    table = (project / "results" / "summary.md").read_text()
    assert "| clean model (never poisoned) |" in table and "| rvpt |" in table and "| cleanclip |" in table
    # The optimised BadCLIP patch differs from its random initialisation (the same attack, built unoptimised).
    params = yaml.safe_load((project / "params.yaml").read_text())
    initial = attacks.build("badclip", params["data"]["image_size"], seed=params["seed"],
                            **params["attacks"]["badclip"]["options"]).patch
    optimised = load_file(project / "data" / "poisoned" / "badclip" / "trigger.safetensors")["patch"]
    assert optimised.shape == initial.shape and (optimised - initial).abs().max() > 1e-3
    losses = (project / "data" / "poisoned" / "badclip" / "trigger_loss.csv").read_text().split()[1:]
    assert len(losses) == params["attacks"]["badclip"]["optimise"]["steps"]
    # CleanCLIP's defended model is an ordinary open_clip local-dir model.
    assert (project / "defended" / "badclip-cleanclip" / "open_clip_model.safetensors").exists()

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
    assert set(by_stage) == STAGES
    assert len(by_stage["tune"]) == 4 and len(by_stage["pretrain"]) == 3 and len(by_stage["poison"]) == 2
    assert len({r.data.tags["rvpt.pipeline"] for r in runs}) == 1
    tunes = {(r.data.tags["attack"], r.data.tags["defense"]): r for r in by_stage["tune"]}
    assert set(tunes) == set(CELLS)
    tune = tunes["badclip", "rvpt"]
    assert tune.data.params["defense.alpha"] == "2.0" and tune.data.params["shots"] == "4"
    assert {"loss", "ce", "fr", "trainable_params", "val_attack_success_rate"} <= set(tune.data.metrics)
    assert tune.data.tags["dvc.stage"] == "tune@badclip-rvpt"
    assert tune.data.tags["upstream.pretrain"] in {r.info.run_id for r in by_stage["pretrain"]}
    evaluate = by_stage["evaluate"][0]
    assert evaluate.data.metrics["badclip.rvpt.attack_success_rate"] == by_cell["badclip", "rvpt"]["attack_success_rate"]
    scan = by_stage["scan"][0]
    assert scan.data.metrics["badnet-rvpt.scan_residual_success"] == by_cell["badnet", "rvpt"]["scan_residual_success"]
    assert scan.data.tags["upstream.tune.badnet-rvpt"] == tunes["badnet", "rvpt"].info.run_id
    artifacts = {a.path for a in client.list_artifacts(tune.info.run_id)}
    assert "prompts.safetensors" in artifacts

    # Nothing changed: a second repro runs nothing and logs no new run.
    second = run(["dvc", "repro"], project)
    assert "rvpt stage" not in second.stdout
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)

    # Changing one attack's parameters reruns only that attack's cells (and the table).
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("rate: 0.05", "rate: 0.04", 1))
    third = run(["dvc", "repro"], project).stdout
    assert "rvpt stage poison --attack badnet" in third and "--attack badclip" not in third
    assert "tune --attack badnet --defense rvpt" in third and "rvpt stage evaluate" in third

    # A manual re-run of one stage with an override changes what evaluate reports.
    run(["rvpt", "stage", "tune", "--attack", "badnet", "--defense", "rvpt", "--shots", "2"], project)
    run(["rvpt", "stage", "evaluate"], project)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert {(r["attack"], r["defense"]): r for r in rows}["badnet", "rvpt"]["shots"] == 2
