"""Keeps a project's own MLflow store pointing at the project's own artifacts after a copy.

MLflow records every artifact location as an absolute path (runs, logged models, model versions,
experiments). A project copied or moved with its mlflow.db and mlruns/ would otherwise serve its
artifacts from the old folder, or from nowhere, and log new ones there. MLflow has no call to
change a run's artifact location, so the four columns that hold them are rewritten in place,
from the old project's mlruns/ to this one's. Artifacts elsewhere (a remote store) are left alone.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

# MLflow 3's SQL schema: the columns that hold absolute artifact locations.
COLUMNS = {"experiments": ("experiment_id", "artifact_location"), "runs": ("run_uuid", "artifact_uri"),
           "logged_models": ("model_id", "artifact_location"),
           "model_versions": ("name, version", "storage_location")}
FOLDER = "mlruns"


def moved(location: str, here: str) -> str | None:
    """The location under `here` (this project's mlruns/, as a path) when it lies under another
    project's mlruns/; None when it already lies here or is not a local mlruns/ path."""
    scheme = "file://" if location.startswith("file://") else ""
    path = location.removeprefix(scheme)
    marker = path.rfind(f"/{FOLDER}")
    if not path.startswith("/") or marker < 0:
        return None
    end = marker + len(FOLDER) + 1
    if path[end:end + 1] not in ("", "/") or path[:end] == here:
        return None
    return scheme + here + path[end:]


def relocate(database: Path, root: Path) -> int:
    """Rewrites, in `database`, every artifact location under another folder's mlruns/ to lie under
    root/mlruns/; returns the number of rows changed (0 once the store is in place)."""
    here = str(root.resolve() / FOLDER)
    changed = 0
    with sqlite3.connect(database, timeout=30) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, (key, column) in COLUMNS.items():
            if table not in tables:
                continue
            keys = key.split(", ")
            for *ids, location in connection.execute(f"SELECT {key}, {column} FROM {table}").fetchall():
                new = moved(location or "", here)
                if new is not None:
                    where = " AND ".join(f"{k} = ?" for k in keys)
                    connection.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (new, *ids))
                    changed += 1
    connection.close()
    return changed


def needs_relocation(database: Path, root: Path) -> bool:
    """One cheap read: does any experiment keep its artifacts in another folder's mlruns/?"""
    if not database.is_file():
        return False
    here = str(root.resolve() / FOLDER)
    with sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as connection:
        try:
            found = connection.execute("SELECT artifact_location FROM experiments").fetchall()
        except sqlite3.Error:
            found = []  # not an MLflow store yet
    connection.close()
    return any(moved(location or "", here) is not None for (location,) in found)


def follow(root: Path) -> int:
    """Moves root/mlflow.db's artifact locations to root/mlruns/ if the project was copied or moved;
    returns the rows changed (0 in place, after one read)."""
    database = root / "mlflow.db"
    return relocate(database, root) if needs_relocation(database, root) else 0
