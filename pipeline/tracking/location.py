"""Where a stage's run logs and what it belongs to: the repository the user works in (even from a
queued experiment's temporary copy), the tracking URI, the git commit and the pipeline's id."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from pipeline.config.params import PARAMS_FILE
from pipeline.tracking import stores

ENV_URI = stores.ENV_URI
UI = ("127.0.0.1", 5000)  # where `rvpt ui` serves a local store
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


def run_link(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI: the tracking server's own, or the one `rvpt ui` serves."""
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://{UI[0]}:{UI[1]}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
