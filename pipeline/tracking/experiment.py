"""The MLflow experiment the stages log to, and the runs that organise it: the parent run of
each pipeline, and runs a killed stage left open."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.store import owner

# MLflow 3 opens an experiment without a kind in its GenAI layout; this one compares trained
# models. mlflow.note.content is the description the experiment page shows.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "rvpt: CLIP models backdoored on purpose and the defenses that try to remove the "
                           "backdoor. One run per pipeline stage: a tune run is one (attack, defense) cell; "
                           "the evaluate run holds every cell's test CA and ASR; the scan run, the trigger "
                           "inversion's verdicts.",
}


def ensure_experiment(name: str, artifact_root: Path | None) -> str:
    """Selects the experiment (returning its id), creating it with its artifacts under
    `artifact_root` (<repo>/mlruns for the local store; None: the store's default).

    MLflow would otherwise put them under the cwd at creation time, which for a first stage run
    by `dvc exp run --queue` is a temporary copy that DVC deletes.
    """
    import mlflow

    if artifact_root is not None and mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifact_root.as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a parallel stage
    experiment = mlflow.set_experiment(name)
    for key, value in EXPERIMENT_TAGS.items():
        if key not in experiment.tags:
            mlflow.set_experiment_tag(key, value)
    return experiment.experiment_id


OWNERS = Path(".rvpt/runs")  # under the repository root: which process owns each open run, kept off MLflow


def claim(root: Path, run_id: str) -> Path:
    """Records this process as the owner of an open run (host, pid, start time), on this machine
    only: MLflow shows what a run computed, not which process ran it."""
    record = root / OWNERS / f"{run_id}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(owner.me()))
    return record


def close_orphans(root: Path, stage: str, experiment: str) -> None:
    """Marks KILLED the runs of this stage left RUNNING by a process of this machine that is gone
    (killed with -9, say), so that `mlflow ui` shows no run as live forever. A live process's run,
    and a run this machine holds no record of (another machine's), are left alone."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    runs = client.search_runs([found.experiment_id], f"attributes.status = 'RUNNING' and tags.`rvpt.stage` = '{stage}'",
                              max_results=1000)
    for run in runs:
        record = root / OWNERS / f"{run.info.run_id}.json"
        try:
            recorded = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if owner.gone(recorded):
            client.set_terminated(run.info.run_id, "KILLED")
            record.unlink(missing_ok=True)


PIPELINE_STAGE = "pipeline"


def pipeline_parent(experiment_id: str, pipeline: str, tags: dict[str, str]) -> str:
    """The run that groups one pipeline's stage runs (one per `dvc repro` or `dvc exp run` of the
    same code and params), created by the first stage that logs. It holds no work of its own."""
    import mlflow

    client = mlflow.MlflowClient()
    query = f"tags.`rvpt.pipeline` = '{pipeline}' and tags.`rvpt.stage` = '{PIPELINE_STAGE}'"
    found = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0].info.run_id
    name = f"pipeline {tags['dvc.exp']}" if "dvc.exp" in tags else f"pipeline {pipeline}"
    created = client.create_run(experiment_id, run_name=name, tags={**tags, "rvpt.stage": PIPELINE_STAGE})
    client.set_terminated(created.info.run_id, "FINISHED")
    return created.info.run_id
