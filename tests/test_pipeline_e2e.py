"""The whole chain through real DVC, in a fresh git repository, logging to a real MLflow sqlite store."""
import json

import mlflow
from conftest import run

STAGES = {"download", "pretrain", "poison", "sample", "tune", "evaluate"}


def test_dvc_repro_smoke_writes_summary_and_mlflow_runs(project):
    run(["dvc", "repro"], project)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert [(r["attack"], r["defense"]) for r in rows] == [("badnet", "none"), ("badnet", "rvpt"), ("badnet", "vpt")]
    for row in rows:
        assert 0.0 <= row["clean_accuracy"] <= 1.0 and 0.0 <= row["attack_success_rate"] <= 1.0
    assert rows[1]["trainable_params"] == 2 * 4 * 32 == rows[2]["trainable_params"]
    assert rows[1]["shots"] == 4

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags["rvpt.stage"], []).append(r)
    assert set(by_stage) == STAGES
    assert len(by_stage["tune"]) == 2 and len(by_stage["pretrain"]) == 2
    assert len({r.data.tags["rvpt.pipeline"] for r in runs}) == 1
    tune = {r.data.tags["defense"]: r for r in by_stage["tune"]}["rvpt"]
    assert tune.data.params["tune.alpha"] == "2.0" and tune.data.params["shots"] == "4"
    assert {"loss", "ce", "fr", "trainable_params", "val_attack_success_rate"} <= set(tune.data.metrics)
    assert tune.data.tags["dvc.stage"] == "tune@badnet-rvpt"
    assert tune.data.tags["upstream.pretrain"] in {r.info.run_id for r in by_stage["pretrain"]}
    evaluate = by_stage["evaluate"][0]
    assert evaluate.data.metrics["badnet.rvpt.attack_success_rate"] == rows[1]["attack_success_rate"]
    artifacts = {a.path for a in client.list_artifacts(tune.info.run_id)}
    assert "prompts.safetensors" in artifacts

    # Nothing changed: a second repro runs nothing and logs no new run.
    second = run(["dvc", "repro"], project)
    assert "rvpt stage" not in second.stdout
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)

    # A manual re-run of one stage with an override changes what evaluate reports.
    run(["rvpt", "stage", "tune", "--attack", "badnet", "--defense", "rvpt", "--shots", "2"], project)
    run(["rvpt", "stage", "evaluate"], project)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert rows[1]["shots"] == 2
