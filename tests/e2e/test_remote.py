"""The documented remote setup: stages logging to a live `mlflow server` (sqlite backend, artifacts
proxied by the server) instead of the local store."""
import mlflow

from conftest import copy_of, mlflow_server, run


def test_a_stage_logs_to_a_live_mlflow_server(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_server(backend, tmp_path, "--artifacts-destination", str(tmp_path / "artifacts")) as url:
        result = run(["rvpt", "stage", "tune", "--attack", "badnet", "--defense", "rvpt", "-S", "defenses.rvpt.epochs=3"], project,
                     env={"MLFLOW_TRACKING_URI": url})
        assert "rvpt stage tune: wrote defended/rvpt/badnet" in result.stdout
        client = mlflow.MlflowClient(url)
        experiment = client.get_experiment_by_name("smoke")
        [tuned] = client.search_runs([experiment.experiment_id], "tags.`rvpt.stage` = 'tune'")
        assert tuned.info.status == "FINISHED"
        assert tuned.data.tags["dvc.stage"] == "manual" and tuned.data.params["defense_name"] == "rvpt"
        assert "val_clean_accuracy" in tuned.data.metrics
        names = {f.path for f in client.list_artifacts(tuned.info.run_id, "defended")}
        assert "defended/prompts.safetensors" in names  # uploaded through the server to its artifact store
    assert list((tmp_path / "artifacts").rglob("prompts.safetensors"))
