"""MLflow: one run per executed stage, tagged so runs of one pipeline sit side by side in `mlflow ui`."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from pathlib import Path

from pipeline import owner, stores
from pipeline.params import PARAMS_FILE
from rvpt import compute

ENV_URI = stores.ENV_URI

QUEUE_DIR = Path(".dvc") / "tmp" / "exps"


def stage_dir() -> Path:
    """Where the stage runs: DVC sets DVC_ROOT for each stage; by hand, the current folder."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def repo_root() -> Path:
    """The repository the user works in, even when DVC runs a stage in a temporary copy.

    `dvc exp run --queue` copies the project to <repo>/.dvc/tmp/exps/<tmp>/ and deletes it
    afterwards, so the root is what lies above that.
    """
    root = stage_dir().resolve()
    parts = root.parts
    marker = QUEUE_DIR.parts
    for i in range(len(parts) - len(marker)):
        if parts[i:i + len(marker)] == marker:
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    # Absolute, so that `dvc exp run --queue` (which runs in temporary copies) still logs here.
    return os.environ.get(ENV_URI) or f"sqlite:///{repo_root() / 'mlflow.db'}"


def check_reachable(timeout_s: float) -> None:
    """Fails fast, before any work, when the tracking store cannot take this stage's run."""
    stores.check_reachable(tracking_uri(), timeout_s, repo_root() / "mlflow.db")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo_root(),
                             timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "none"
    except (OSError, subprocess.TimeoutExpired):
        return "none"


def pipeline_id(commit: str) -> str:
    """Same code + same params + same experiment name = same pipeline; a short stable hash."""
    digest = hashlib.sha256()
    digest.update(commit.encode())
    # The params this stage really runs with: in a queued experiment, its own copy, not the repo's.
    params = stage_dir() / PARAMS_FILE
    digest.update(params.read_bytes() if params.exists() else b"")
    digest.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return digest.hexdigest()[:12]


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


class StageRun:
    """The one MLflow run of a stage execution; metrics are buffered and sent in one batch."""

    def __init__(self, run):
        self.run = run
        self.id = run.info.run_id
        self._metrics: list = []

    def metric(self, key: str, value: float, step: int = 0) -> None:
        from mlflow.entities import Metric

        self._metrics.append(Metric(key, float(value), int(time.time() * 1000), step))

    def series(self, key: str, values, every: int = 1) -> None:
        """A whole curve, thinned to every `every`-th point, sent with the next flush."""
        for step in range(0, len(values), every):
            self.metric(key, values[step], step)

    def flush(self) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        for start in range(0, len(self._metrics), 1000):
            client.log_batch(self.id, metrics=self._metrics[start:start + 1000])
        self._metrics.clear()

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), folder)
        else:
            mlflow.log_artifact(str(path), folder)

    def table(self, columns: dict[str, list], name: str) -> None:
        """A table that the run's evaluation view shows (and `mlflow.load_table` reads back)."""
        import mlflow

        mlflow.log_table(columns, name)

    def describe(self, markdown: str) -> None:
        """The run's description, rendered on its page (cut to the longest tag MLflow stores)."""
        import mlflow

        mlflow.set_tag("mlflow.note.content", markdown[:8000])

    def model(self, **card) -> None:
        """The defended model as an MLflow model (pipeline/model_registry.py), registered by name."""
        from pipeline.model_registry import log_defended

        log_defended(**card)

    def onto(self, run_metrics: dict[str, dict[str, float]]) -> None:
        """Adds metrics to other runs (a cell's tune run, say), so that the runs table ranks them.
        A run the store does not hold (made under another tracking URI) is skipped."""
        import mlflow
        from mlflow.entities import Metric

        client, now = mlflow.MlflowClient(), int(time.time() * 1000)
        for run_id, metrics in run_metrics.items():
            try:
                client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
            except mlflow.exceptions.MlflowException:
                continue


# MLflow 3 opens an experiment without a kind in its GenAI layout; this one compares trained
# models. mlflow.note.content is the description the experiment page shows.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "rvpt: CLIP models backdoored on purpose and the defenses that try to remove the "
                           "backdoor. One run per pipeline stage: a tune run is one (attack, defense) cell; "
                           "the evaluate run holds every cell's test CA and ASR; the scan run, the trigger "
                           "inversion's verdicts.",
}


def ensure_experiment(name: str, local_store: bool) -> str:
    """Selects the experiment (returning its id), creating it with artifacts under <repo>/mlruns
    for the local store.

    MLflow would otherwise put them under the cwd at creation time, which for a first stage run
    by `dvc exp run --queue` is a temporary copy that DVC deletes.
    """
    import mlflow

    if local_store and mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=(repo_root() / "mlruns").as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a parallel stage
    experiment = mlflow.set_experiment(name)
    for key, value in EXPERIMENT_TAGS.items():
        if key not in experiment.tags:
            mlflow.set_experiment_tag(key, value)
    return experiment.experiment_id


class Unlogged(StageRun):
    """What a process other than rank 0 logs to: nothing (one run per stage, from rank 0)."""

    def __init__(self):
        self.id, self._metrics = "", []

    def flush(self) -> None:
        self._metrics.clear()

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def table(self, columns: dict[str, list], name: str) -> None:
        pass

    def describe(self, markdown: str) -> None:
        pass

    def model(self, **card) -> None:
        pass

    def onto(self, run_metrics: dict[str, dict[str, float]]) -> None:
        pass


def close_orphans(stage: str, experiment: str) -> None:
    """Marks KILLED the runs of this stage left RUNNING by a process that is gone (killed with -9,
    say), so that `mlflow ui` shows no run as live forever. A live process's run is left alone."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    runs = client.search_runs([found.experiment_id], f"attributes.status = 'RUNNING' and tags.`rvpt.stage` = '{stage}'",
                              max_results=1000)
    for run in runs:
        tags = run.data.tags
        recorded = {key: tags.get(f"rvpt.owner.{key}", "") for key in ("host", "pid", "started")}
        if owner.gone(recorded):
            client.set_terminated(run.info.run_id, "KILLED")


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


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, params: dict, tags: dict | None = None):
    """Opens the stage's run with its params and identifying tags; flushes metrics on the way out."""
    if not compute.is_main():
        yield Unlogged()
        return
    import mlflow  # here, not at the top: a command that fails validation never pays its 2 s import

    local_store = ENV_URI not in os.environ  # read first: set_tracking_uri writes that variable
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = ensure_experiment(experiment, local_store)
    close_orphans(stage, experiment)
    commit = git_commit()
    all_tags = {
        "rvpt.stage": stage,
        "rvpt.pipeline": pipeline_id(commit),
        "dvc.stage": os.environ.get("DVC_STAGE", "manual"),
        "dvc.exp": os.environ.get("DVC_EXP_NAME", ""),
        "mlflow.source.git.commit": commit,
        **{f"rvpt.owner.{key}": value for key, value in owner.me().items()},
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    all_tags = {key: value for key, value in all_tags.items() if value != ""}  # e.g. dvc.exp outside an experiment
    name = all_tags["dvc.stage"] if all_tags["dvc.stage"] != "manual" else stage
    shared = {key: all_tags[key] for key in ("rvpt.pipeline", "dvc.exp", "mlflow.source.git.commit") if key in all_tags}
    parent = pipeline_parent(experiment_id, all_tags["rvpt.pipeline"], shared)
    with mlflow.start_run(run_name=name, tags=all_tags, parent_run_id=parent) as run:
        handle = StageRun(run)
        mlflow.log_params(flatten(params))
        try:
            yield handle
        finally:
            handle.flush()
