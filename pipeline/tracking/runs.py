"""MLflow: one run per executed stage, tagged so runs of one pipeline sit side by side in `mlflow ui`."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from pipeline.store.artifacts import write_json
from pipeline.store.outputs import MARKER, atomic_dir
from pipeline.tracking import provenance, relocate
from pipeline.tracking.location import ENV_URI, git_commit, pipeline_id, repo_root, stage_dir, tracking_uri
from pipeline.tracking.experiment import claim, close_orphans, ensure_experiment, pipeline_parent
from rvpt import compute

STARTED = time.time()  # when this command's work began; `execute` sets it


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


# Numbers a stage's record holds that are settings or sizes, not measurements: MLflow params, so
# that the runs table never plots them.
SETTINGS = {"seed", "defense_seed", "shots", "trainable_params", "trainable_fraction", "resumed_from_step"}


class StageRun:
    """The one MLflow run of a stage execution; metrics are buffered and sent in one batch."""

    def __init__(self, run, parent: str | None = None):
        self.run, self.parent = run, parent
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
        """The defended model as an MLflow model (pipeline/tracking/registry.py), registered by name."""
        from pipeline.tracking.registry import log_defended

        log_defended(**card)

    def describe_models(self, cells: dict[str, dict]) -> None:
        """Each registered cell's description, tags and test metrics, by its tune run's id."""
        from pipeline.tracking.registry import describe_versions

        describe_versions(cells)

    @contextlib.contextmanager
    def output(self, folder: str | Path, logged: tuple[str, ...] | None = (),
               under: str | None = None) -> Iterator[Path]:
        """The stage's output folder, built in a temporary sibling and put in place only if the
        block succeeds (pipeline/store/outputs.py); the files named in `logged` (None: every file
        the stage wrote) become the run's artifacts, in its folder `under`, never the temporary's
        ownership marker."""
        with atomic_dir(folder) as out:
            yield out
            names = sorted(p.name for p in out.iterdir() if p.name != MARKER) if logged is None else logged
            for name in names:
                self.artifact(out / name, under)

    def param(self, key: str, value) -> None:
        import mlflow

        mlflow.log_param(key, value)

    def record(self, path: str | Path, payload: dict, metrics: str | None = "") -> None:
        """The stage's record of what it made (its JSON beside the outputs), with this run's id; with
        `metrics` (a prefix), its measured numbers are logged as the run's metrics too, and the
        numbers that describe the run rather than measure it (SETTINGS) as its params."""
        write_json(path, {**payload, "mlflow_run_id": self.id})
        for key, value in payload.items() if metrics is not None else ():
            if key in SETTINGS:
                self.param(key, value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self.metric(f"{metrics}{key}", value)

    def inputs(self, datasets: dict[str, Path], context: str) -> None:
        """Logs the datasets this stage reads as the run's inputs, each with DVC's content hash from
        dvc.lock as its digest, so a run names the exact data DVC tracks. A path that no stage in
        dvc.lock wrote (a stage run by hand before any `dvc repro`) is logged without a digest."""
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        hashes = locked_hashes(stage_dir() / "dvc.lock")
        for name, path in datasets.items():
            digest = next((hashes[str(p)] for p in (Path(path), *Path(path).parents) if str(p) in hashes), None)
            dataset = MetaDataset(LocalArtifactDatasetSource(str(path)), name=name, digest=digest)
            mlflow.log_input(dataset, context=context)

    def onto(self, run_metrics: dict[str, dict[str, float]], run_tags: dict[str, dict[str, str]] | None = None) -> None:
        """Adds metrics and tags to other runs (a cell's tune run, say), so that the runs table ranks
        them. A run the store does not hold (made under another tracking URI) is skipped."""
        import mlflow
        from mlflow.entities import Metric, RunTag

        client, now = mlflow.MlflowClient(), int(time.time() * 1000)
        for run_id, metrics in run_metrics.items():
            tags = [RunTag(k, v) for k, v in (run_tags or {}).get(run_id, {}).items()]
            try:
                client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], tags=tags)
            except mlflow.exceptions.MlflowException:
                continue

    def on_parent(self, metrics: dict[str, float], figures: list[Path], table: dict[str, list]) -> None:
        """The pipeline's answer on its parent run, the row `mlflow ui` shows first: the matrix as a
        table, its figures, and per-defense metrics."""
        import mlflow
        from mlflow.entities import Metric

        if not self.parent:
            return
        client, now = mlflow.MlflowClient(), int(time.time() * 1000)
        client.log_batch(self.parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for figure in figures:
            client.log_artifact(self.parent, str(figure), "matrix")
        mlflow.log_table(table, "matrix/matrix.json", run_id=self.parent)


def locked_hashes(lock: Path) -> dict[str, str]:
    """Every output path in dvc.lock with its md5 (a folder's without DVC's `.dir` suffix)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 6x faster on a 450 KB lock
    try:
        stages = yaml.load(lock.read_text(), Loader=loader).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return {out["path"]: str(out["md5"]).removesuffix(".dir") for stage in stages.values() if isinstance(stage, dict)
            for out in stage.get("outs", []) if isinstance(out, dict) and "md5" in out and "path" in out}


class Unlogged(StageRun):
    """What a process other than rank 0 logs to: nothing (one run per stage, from rank 0)."""

    def __init__(self):
        self.id, self.parent, self._metrics = "", None, []

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

    def describe_models(self, cells: dict[str, dict]) -> None:
        pass

    def inputs(self, datasets: dict[str, Path], context: str) -> None:
        pass

    def onto(self, run_metrics: dict[str, dict[str, float]], run_tags=None) -> None:
        pass

    def on_parent(self, metrics: dict[str, float], figures: list[Path], table: dict[str, list]) -> None:
        pass


@contextlib.contextmanager
def stage(name: str, params, logged: dict, tags: dict | None = None, inputs: dict[str, Path] | None = None,
          context: str = "", run_name: str | None = None) -> Iterator[StageRun]:
    """A stage's one MLflow run: `logged` as its params, `tags`, and the datasets it reads as inputs
    (`context` names what it does with them). The stage skeleton: a stage opens this, writes its
    output folder with `run.output(...)` and its record with `run.record(...)`."""
    made_by = provenance.machine(params.threads, params.compute.device, params.compute.precision)
    tags = {**(tags or {}), **{f"rvpt.{key}": value for key, value in made_by.items()}}
    with stage_run(name, params.tracking.experiment, logged, tags, name=run_name) as run:
        if inputs:
            run.inputs(inputs, context or name)
        yield run


def without_local_paths(tags: dict[str, str], stage: str) -> dict[str, str]:
    """MLflow's source tags without this machine's paths: the command instead of the script's
    absolute path, and the git remote only when it is a URL (a local clone's path says nothing)."""
    tags = {**tags, "mlflow.source.name": f"rvpt stage {stage}"}
    repo = tags.get("mlflow.source.git.repoURL", "")
    if repo and "://" not in repo and not repo.startswith("git@"):
        del tags["mlflow.source.git.repoURL"]
    return tags


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, params: dict, tags: dict | None = None, grouped: bool = True,
              name: str | None = None):
    """Opens the stage's run with its params and identifying tags; flushes metrics on the way out.
    A `grouped` run sits under its pipeline's parent run; `rvpt defend`, outside any pipeline, is not.
    The run is named `name` (one of several runs of a command, e.g. a tune cell, which then starts
    now), else after its DVC stage, else after `stage`."""
    if not compute.is_main():
        yield Unlogged()
        return
    import mlflow  # here, not at the top: a command that fails validation never pays its 2 s import

    local_store = ENV_URI not in os.environ  # read first: set_tracking_uri writes that variable
    if local_store:
        relocate.follow(repo_root())  # a copied project logs into its own mlruns/
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = ensure_experiment(experiment, repo_root() / relocate.FOLDER if local_store else None)
    close_orphans(repo_root(), stage, experiment)
    commit = git_commit()
    all_tags = {
        "rvpt.stage": stage,
        "rvpt.pipeline": pipeline_id(commit),
        "dvc.stage": os.environ.get("DVC_STAGE", "manual"),
        "dvc.exp": os.environ.get("DVC_EXP_NAME", ""),
        "mlflow.source.git.commit": commit,
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    all_tags = {key: value for key, value in all_tags.items() if value != ""}  # e.g. dvc.exp outside an experiment
    started = STARTED if name is None else time.time()
    name = name or (all_tags["dvc.stage"] if all_tags["dvc.stage"] != "manual" else stage)
    shared = {key: all_tags[key] for key in ("rvpt.pipeline", "dvc.exp", "mlflow.source.git.commit") if key in all_tags}
    parent = pipeline_parent(experiment_id, all_tags["rvpt.pipeline"], shared) if grouped else None
    from mlflow.tracking.context.registry import resolve_tags  # the user and source tags start_run adds

    # Created with the time the command started, so the run's duration is the stage's, not its logging's.
    tags = without_local_paths(resolve_tags({**all_tags, **({"mlflow.parentRunId": parent} if parent else {})}), stage)
    created = mlflow.MlflowClient().create_run(experiment_id, start_time=int(started * 1000), run_name=name,
                                               tags=tags)
    claimed = claim(repo_root(), created.info.run_id)
    try:
        with mlflow.start_run(run_id=created.info.run_id) as run:
            handle = StageRun(run, parent)
            mlflow.log_params(flatten(params))
            try:
                yield handle
            finally:
                for key, value in provenance.peak_memory().items():
                    handle.metric(key, value)
                handle.flush()
    finally:
        claimed.unlink(missing_ok=True)  # a run that ended is no orphan; only a killed process leaves its record
