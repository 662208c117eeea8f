"""`rvpt ui`: `mlflow ui` on this project's own store, working from any copy of the project."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from pipeline.commands.run import PARAMS, fail


def ui(port: int = typer.Option(5000, help="Port to serve on."),
       host: str = typer.Option("127.0.0.1", help="Address to serve on (127.0.0.1: this machine only)."),
       params: Path = PARAMS):
    """Serve `mlflow ui` over this project's runs (./mlflow.db, or MLFLOW_TRACKING_URI).

    A project copied or moved with its store still records its artifacts at the old path; the
    local store's artifact locations are first moved to this folder's mlruns/, so the UI serves
    this copy's artifacts.
    """
    from pipeline.config import params as params_module
    from pipeline.tracking import relocate, stores, runs
    from rvpt.errors import BadInput

    uri = runs.tracking_uri()
    try:
        runs.check_reachable(params_module.load(params, {}).tracking.timeout_s)
    except BadInput as error:
        fail(str(error))
    if stores.ENV_URI not in os.environ:
        root = runs.repo_root()
        changed = relocate.follow(root)
        if changed:
            typer.echo(f"rvpt ui: moved {changed} artifact locations to {root / relocate.FOLDER}", err=True)
    typer.echo(f"rvpt ui: serving {uri} on http://{host}:{port}", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", host, "--port", str(port)])
