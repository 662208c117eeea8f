"""The MLflow store a stage logs to, wherever DVC runs it."""
import mlflow

from pipeline.tracking import repo_root, stage_run


def test_queued_experiment_logs_to_the_repository_store(tmp_path, monkeypatch):
    # `dvc exp run --queue` runs stages in <repo>/.dvc/tmp/exps/<tmp>/ and deletes that copy afterwards.
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpq1"
    copy.mkdir(parents=True)
    (copy / "params.yaml").write_text("seed: 0\n")
    (copy / "note.txt").write_text("artifact")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.setenv("DVC_EXP_NAME", "queued-one")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert repo_root() == tmp_path

    with stage_run("sample", "tracking-test", {"shots": 4}, {"attack": "badnet"}) as run:
        run.series("loss", [3.0, 2.0, 1.0])
        run.artifact(copy / "note.txt")

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracking-test")
    assert experiment.artifact_location == (tmp_path / "mlruns").as_uri()
    logged = client.get_run(run.id)
    assert logged.data.tags["dvc.exp"] == "queued-one" and logged.data.tags["attack"] == "badnet"
    assert logged.data.params == {"shots": "4"}
    assert [m.value for m in client.get_metric_history(run.id, "loss")] == [3.0, 2.0, 1.0]
    assert list((tmp_path / "mlruns").rglob("note.txt"))
    assert not (copy / "mlflow.db").exists() and not (copy / "mlruns").exists()
