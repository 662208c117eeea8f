"""The MLflow store a stage logs to, wherever DVC runs it."""
import time

import mlflow

from conftest import make_project, run, smoke_params


def test_queued_experiment_logs_to_the_repository_store(tmp_path):
    # `dvc exp run --queue` runs each experiment in a temporary copy, <repo>/.dvc/tmp/exps/<tmp>/,
    # and deletes that copy afterwards: the runs and their artifacts must land in the repository.
    project = make_project(tmp_path / "project", smoke_params())
    run(["dvc", "exp", "run", "--queue", "--name", "queued-one", "-S", "data.corpus_size=600", "download"], project)
    run(["dvc", "queue", "start", "--jobs", "1"], project)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if "Success" in status or "Failed" in status:
            break
        time.sleep(2)
    assert "Success" in status, status + run(["dvc", "queue", "logs", "queued-one"], project, check=False).stdout
    run(["dvc", "queue", "stop", "--kill"], project, check=False)

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.artifact_location == (project / "mlruns").as_uri()
    [logged] = client.search_runs([experiment.experiment_id], "tags.`rvpt.stage` = 'download'")
    # The experiment's stage runs sit under one parent run, named after it.
    [parent] = client.search_runs([experiment.experiment_id], "tags.`rvpt.stage` = 'pipeline'")
    assert logged.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.run_name == "pipeline queued-one" and parent.info.status == "FINISHED"
    assert logged.data.tags["dvc.exp"] == "queued-one" and logged.data.tags["dvc.stage"] == "download"
    assert logged.data.params["data.corpus_size"] == "600" and logged.data.metrics["corpus_images"] == 600
    assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))
    shown = run(["dvc", "exp", "show", "--csv", "--keep", "data.corpus_size"], project).stdout
    assert "queued-one" in shown and "600" in shown
