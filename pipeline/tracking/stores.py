"""Checks that an MLflow backend store can take a run, made before a stage does any work.

Each check is bounded by the caller's timeout and ends in one BadInput line; none leaves a
file behind (a probe file is removed again).
"""
from __future__ import annotations

import base64
import json
import math
import os
import socket
import sqlite3
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from rvpt.errors import BadInput, shown

ENV_URI = "MLFLOW_TRACKING_URI"
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _probe_folder(folder: Path, uri: str) -> None:
    try:
        handle, probe = tempfile.mkstemp(prefix=".rvpt-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise BadInput(f"{ENV_URI}={shown(uri)}: cannot write in {folder} ({error.strerror or error})") from None


def check_sqlite(uri: str, timeout_s: float) -> None:
    """An existing file must open as a SQLite database within the timeout; a new one must be creatable."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(uri).database
    except ArgumentError as error:
        raise BadInput(f"{ENV_URI}={shown(uri)}: not a database URL ({error})") from None
    if not database or database == ":memory:":
        raise BadInput(f"{ENV_URI}={shown(uri)}: an in-memory SQLite store keeps no runs; name a file")
    path = Path(database)
    if not path.exists():
        if not path.parent.is_dir():
            raise BadInput(f"{ENV_URI}={shown(uri)}: {path.parent} is not a folder")
        _probe_folder(path.parent, uri)
        return
    if not stat.S_ISREG(path.stat().st_mode):
        raise BadInput(f"{ENV_URI}={shown(uri)}: {path} is not a regular file")
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
        connection.close()
    except sqlite3.Error as error:
        raise BadInput(f"{ENV_URI}={shown(uri)}: {path} does not open as a SQLite database ({error})") from None


def check_database(uri: str, timeout_s: float) -> None:
    """A database server URL: its driver must be installed and its host must accept a connection."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        create_engine(url).dispose()  # imports the driver; connects to nothing
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as error:
        raise BadInput(f"{ENV_URI}={shown(uri)}: no usable database driver ({shown(str(error))})") from None
    host = url.host or "localhost"
    port = url.port or DATABASE_PORTS[url.get_backend_name()]
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise BadInput(f"{ENV_URI}={shown(uri)}: {host}:{port} did not accept a connection within "
                       f"{timeout_s:g} s ({error.strerror or error})") from None


def check_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set; then the folder must be writable."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise BadInput(f"{ENV_URI}={shown(uri)}: MLflow's file store is off unless MLFLOW_ALLOW_FILE_STORE=true; "
                       f"use sqlite:///<path>/mlflow.db instead")
    parsed = urllib.parse.urlsplit(uri)
    path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{ENV_URI}={shown(uri)}: {path} is not a folder")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInput(f"{ENV_URI}={shown(uri)}: {ancestor} is not a folder")
    _probe_folder(ancestor, uri)


def check_reachable(uri: str, timeout_s: float, default_store: Path) -> None:
    """Fails fast, before any work, when the tracking store cannot take this stage's run.

    Every scheme MLflow accepts is checked within `timeout_s`: a server must answer, a database
    must be reachable (or a SQLite file openable or creatable), a file store must be allowed and
    writable. MLflow's own client would retry for minutes, or fail only after the work.
    """
    if not uri.isprintable():
        raise BadInput(f"{ENV_URI}={shown(uri)}: holds a control character")
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        check_server(uri, timeout_s, default_store)
    elif scheme == "sqlite":
        check_sqlite(uri, timeout_s)
    elif scheme.split("+")[0] in DATABASE_PORTS:
        check_database(uri, timeout_s)
    elif scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive
        check_file_store(uri)
    else:
        raise BadInput(f"{ENV_URI}={shown(uri)}: scheme {shown(scheme)} is not one rvpt can check before work "
                       f"(use http(s)://, sqlite:///, postgresql://, mysql://, mssql:// or a folder)")


def check_server(uri: str, timeout_s: float, default_store: Path) -> None:
    """The server must answer MLflow's REST API, not merely answer: a web server or a proxy that
    is not MLflow (which may well answer /health) would take the stage's work and then fail it.
    A lookup of an experiment that need not exist gets JSON from MLflow either way, found or not."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?"
                                     f"experiment_name=Default", headers=_credentials())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, body = response.status, response.read(1 << 16)
    except urllib.error.HTTPError as error:  # MLflow answers a missing experiment with 404 and JSON
        status, body = error.code, error.read(1 << 16)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise BadInput(f"MLflow tracking server {shown(uri)} did not answer within {timeout_s:g} s ({reason}); "
                       f"start it, or unset {ENV_URI} to log to {default_store}") from None
    if status in (401, 403):
        raise BadInput(f"MLflow tracking server {shown(uri)} refused the request (HTTP {status}); set "
                       f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ({"experiment", "error_code"} & set(answer)):
        raise BadInput(f"{ENV_URI}={shown(uri)} answers, but not as an MLflow tracking server (HTTP {status} to "
                       f"its REST API); point it at `mlflow server`, or unset it to log to {default_store}")


def _credentials() -> dict[str, str]:
    """The headers MLflow's own client would send, from the same variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}
