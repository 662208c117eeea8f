"""A project copied to a new path, its original deleted, still serves and logs its own artifacts:
a stage run in the copy logs into the copy's mlruns/, and `rvpt ui` serves the copy's files."""
import shutil
import sqlite3
import urllib.request

from conftest import BIN, copy_of, environment, free_port, run, serving

from pipeline.tracking.relocate import moved, relocate


def artifact_uris(project) -> list[str]:
    with sqlite3.connect(project / "mlflow.db") as connection:
        found = [uri for (uri,) in connection.execute("SELECT artifact_uri FROM runs")]
    connection.close()
    return found


def moved_copy(reproduced, tmp_path, name: str):
    """A copy of a copy whose first copy is gone, so its store points at a folder that is not there."""
    first = copy_of(reproduced, tmp_path / f"{name}-first")
    relocate(first / "mlflow.db", first)  # so that the second copy's store points into the first
    second = copy_of(first, tmp_path / name)
    shutil.rmtree(first)
    assert all(str(second) not in uri for uri in artifact_uris(second))
    return second


def test_a_stage_in_a_copied_project_logs_into_the_copy(reproduced, tmp_path):
    project = moved_copy(reproduced, tmp_path, "staged")
    run(["rvpt", "stage", "report"], project)
    assert all(uri.startswith((project / "mlruns").as_uri()) for uri in artifact_uris(project))
    assert list((project / "mlruns").rglob("report.html"))


def test_rvpt_ui_serves_a_copied_projects_artifacts(reproduced, tmp_path):
    project = moved_copy(reproduced, tmp_path, "served")
    with sqlite3.connect(project / "mlflow.db") as connection:
        [(run_id,)] = connection.execute("SELECT run_uuid FROM runs WHERE name = 'tune@badnet-rvpt'").fetchall()
    connection.close()
    port = free_port()
    with serving([str(BIN / "rvpt"), "ui", "--port", str(port)], project, port, environment()) as url:
        query = f"{url}/get-artifact?path=defended/prompts.safetensors&run_uuid={run_id}"
        served = urllib.request.urlopen(query, timeout=30).read()
    assert served == (project / "defended" / "rvpt" / "badnet" / "prompts.safetensors").read_bytes()
    assert all(uri.startswith((project / "mlruns").as_uri()) for uri in artifact_uris(project))


def test_only_another_projects_mlruns_paths_are_moved():
    here = "/new/project/mlruns"
    assert moved("file:///old/p/mlruns/0/abc/artifacts", here) == "file:///new/project/mlruns/0/abc/artifacts"
    assert moved("/old/p/mlruns/0", here) == "/new/project/mlruns/0"
    assert moved("/old/mlruns/p/mlruns", here) == "/new/project/mlruns"  # the project's own mlruns/ is the last
    assert moved("file:///new/project/mlruns/models/m-1/artifacts", here) is None
    assert moved("s3://bucket/mlruns/0", here) is None and moved("/old/mlruns-x/0", here) is None
