"""`rvpt ui`: `mlflow ui` on this project's own store, working from any copy of the project, opened
where the answer is: the runs view of the experiment, the defended cells ranked by how much ASR
each defense removed."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from pipeline.commands.run import PARAMS, fail

# One worker and no job consumers (MLflow's GenAI evaluation jobs): this UI reads runs; and no
# telemetry, on a machine that may have no network.
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
CELLS = "tags.`rvpt.stage` = 'tune'"
RANKED_BY = "metrics.`test_asr_reduction`"
COLUMNS = ["tags.`attack`", "tags.`defense`", "tags.`implanted`", RANKED_BY, "metrics.`test_attack_success_rate`",
           "metrics.`test_clean_accuracy`", "metrics.`test_ca_drop`", "metrics.`test_control_attack_success_rate`",
           "metrics.`test_target_rate`"]
SHARE_KEY = "rvpt-ranked"  # MLflow's shared view state: an experiment tag the page reads by this key


def ranked_view(base: str, experiment_id: str) -> str:
    """The experiment's runs view in the model-training layout (MLflow 3 opens the GenAI one
    otherwise), with the saved view: the defended cells, ranked by ASR reduction, with their
    ranking columns."""
    query = f"workflowType=machine_learning&viewStateShareKey={SHARE_KEY}"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def share_ranked_view(client, experiment_id: str) -> None:
    """Saves the ranked view as MLflow's Share button does (an experiment tag the page reads)."""
    state = {"searchFilter": CELLS, "orderByKey": RANKED_BY, "orderByAsc": False, "selectedColumns": COLUMNS,
             "groupBy": None}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(state))


def ui(port: int = typer.Option(5000, help="Port to serve on (the report links runs to 5000)."),
       host: str = typer.Option("127.0.0.1", help="Address to serve on (127.0.0.1: this machine only)."),
       params: Path = PARAMS):
    """Serve `mlflow ui` over this project's runs (./mlflow.db, or MLFLOW_TRACKING_URI), and print
    the address of the ranked defended cells.

    A project copied or moved with its store still records its artifacts at the old path; the
    local store's artifact locations are first moved to this folder's mlruns/, so the UI serves
    this copy's artifacts.
    """
    from pipeline.config import params as params_module
    from pipeline.tracking import location, relocate, stores
    from rvpt.errors import BadInput

    uri = location.tracking_uri()
    try:
        settings = params_module.load(params, {})
        location.check_reachable(settings.tracking.timeout_s)
    except BadInput as error:
        fail(str(error))
    if stores.ENV_URI not in os.environ:
        root = location.repo_root()
        changed = relocate.follow(root)
        if changed:
            typer.echo(f"rvpt ui: moved {changed} artifact locations to {root / relocate.FOLDER}", err=True)
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    if experiment:
        share_ranked_view(client, experiment.experiment_id)
    base = f"http://{host}:{port}"
    typer.echo(f"rvpt ui: serving {uri}", err=True)
    typer.echo(ranked_view(base, experiment.experiment_id) if experiment else
               f"{base} (no runs yet in experiment {settings.tracking.experiment!r}: run `dvc repro`)")
    sys.stdout.flush()
    os.environ.update(QUIET)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", host, "--port", str(port), "--workers", "1"])
