"""Nothing lost, whatever the input: names that cannot become paths, temporaries that are ours
alone, outputs checked before the work, killed runs closed, and the project's lock respected."""
import json
import os
import signal
import subprocess
import time

import mlflow
import pytest
import yaml
import zc.lockfile
from conftest import BIN, call, copy_of, environment, one_error_line, tree

from pipeline.store import outputs, owner
from rvpt.errors import BadInput

HOSTILE_NAMES = ["x/../../..", "..", "/abs", "a/b", "", "*"]


@pytest.fixture(scope="module")
def hostile_project(reproduced, tmp_path_factory):
    """A copy of the reproduced smoke project, with every file hashed."""
    project = copy_of(reproduced, tmp_path_factory.mktemp("hostile"))
    return project, tree(project)


def with_params(project, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "hostile.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("role", ["attack", "defense"])
def test_a_name_that_is_a_path_changes_no_file_of_the_project(hostile_project, role, name):
    project, before = hostile_project

    def define(params):
        section = params["attacks" if role == "attack" else "defenses"]
        section[name] = section["badnet" if role == "attack" else "rvpt"]
        params["run"]["attacks" if role == "attack" else "defenses"] = [name]

    with_params(project, define)
    stage = ["stage", "poison"] if role == "attack" else ["stage", "tune", "--attack", "badnet"]
    try:
        # Defined in the params file and selected by run: ...
        code, _, err = call(project, *stage, "--params", "hostile.yaml")
        assert code == 2
        assert f"{role} {name!r}" in one_error_line(err)
        # ... and named on the command line.
        code, _, err = call(project, *stage, f"--{role}", name, "--params", "hostile.yaml")
        assert code == 2
        assert f"--{role}" in one_error_line(err)
    finally:
        (project / "hostile.yaml").unlink(missing_ok=True)
    assert tree(project) == before


def test_the_worst_name_through_the_installed_command(hostile_project):
    project, before = hostile_project
    with_params(project, lambda p: p["attacks"].update({"x/../../..": p["attacks"]["badnet"]}))
    result = subprocess.run([str(BIN / "rvpt"), "stage", "poison", "--attack", "x/../../..", "--params",
                             "hostile.yaml"], cwd=project, env=environment(), capture_output=True, text=True)
    (project / "hostile.yaml").unlink()
    assert result.returncode == 2
    one_error_line(result.stderr)
    assert tree(project) == before


def test_atomic_dir_refuses_targets_that_are_not_a_name_in_their_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep").write_text("mine")
    before = tree(tmp_path)
    for target in (".", "..", "x/..", tmp_path / "x" / "..", tmp_path / "x" / ".." / "keep", "/"):
        with pytest.raises(BadInput):
            with outputs.atomic_dir(target) as out:
                (out / "new").write_text("new")
    os.symlink(tmp_path / "keep", tmp_path / "link")
    with pytest.raises(BadInput, match="symbolic link"):
        with outputs.atomic_dir(tmp_path / "link"):
            pass
    os.unlink(tmp_path / "link")
    assert tree(tmp_path) == before


def test_only_our_own_stale_temporaries_are_cleaned(tmp_path):
    user = tmp_path / ".out.important"          # the user's, in the old pattern .<name>.*
    user.mkdir()
    (user / "data").write_text("precious")
    globbed = tmp_path / ".out1.keep"           # what the glob ".out[1].*" would have matched
    globbed.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = tmp_path / f".out{outputs.TAG}livelive"   # another run's, still in progress
        live.mkdir()
        (live / outputs.MARKER).write_text(json.dumps({"host": owner.host(), "pid": str(sleeper.pid),
                                                       "started": owner.started(sleeper.pid)}))
        dead = tmp_path / f".out{outputs.TAG}deaddead"   # a killed run's
        dead.mkdir()
        (dead / outputs.MARKER).write_text(json.dumps({"host": owner.host(), "pid": "999999999", "started": "1"}))
        unmarked = tmp_path / f".out{outputs.TAG}nomarker"  # our pattern, but no marker of ours
        unmarked.mkdir()
        for target in (tmp_path / "out", tmp_path / "out[1]"):
            with outputs.atomic_dir(target) as out:
                (out / "result").write_text("new")
        assert (user / "data").read_text() == "precious" and globbed.is_dir() and unmarked.is_dir()
        assert live.is_dir() and not dead.exists()
        assert (tmp_path / "out" / "result").read_text() == "new"
        assert not (tmp_path / "out" / outputs.MARKER).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not [p for p in tmp_path.iterdir() if outputs.TAG in p.name and p not in (live, unmarked)]


def test_outputs_get_the_modes_the_umask_allows(tmp_path):
    with outputs.atomic_dir(tmp_path / "out") as out:
        (out / "file").write_text("x")
    outputs.write_text(tmp_path / "out" / "written.txt", "x")
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~outputs.UMASK
    assert (tmp_path / "out" / "written.txt").stat().st_mode & 0o777 == 0o666 & ~outputs.UMASK


def test_a_blocked_output_is_found_before_the_work(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")

    def runs():
        return {run.info.run_id for run in client.search_runs([e.experiment_id for e in client.search_experiments()])}

    before = runs()
    (project / "defended").rename(project / "moved")
    (project / "defended").write_text("a file where the outputs' folder goes")
    code, _, err = call(project, "stage", "tune", "--attack", "badnet", "--defense", "rvpt")
    assert code == 2 and "defended is not a folder" in one_error_line(err)
    assert runs() == before  # refused before its run opened, so before any training


def test_a_killed_stage_run_is_marked_killed_by_the_next_run(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    stage = subprocess.Popen([str(BIN / "rvpt"), "stage", "tune", "--attack", "badnet", "--defense", "rvpt",
                              "-S", "defenses.rvpt.epochs=5000"], cwd=project, env=environment(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (running := client.search_runs(experiments, "attributes.status = 'RUNNING'")):
        assert time.monotonic() < deadline and stage.poll() is None, "the tune run never opened"
        time.sleep(0.5)
    os.killpg(stage.pid, signal.SIGKILL)
    stage.wait()
    # The command forked its work from a warm server (pipeline/commands/warm.py): that process dies as soon
    # as it sees its caller gone, and the server reaps it; wait for that, as for a cold process.
    # Which process owns a run is recorded on this machine, never in MLflow.
    assert not any(key.startswith("rvpt.owner") for key in client.get_run(running[0].info.run_id).data.tags)
    recorded = json.loads((project / ".rvpt" / "runs" / f"{running[0].info.run_id}.json").read_text())
    while not owner.gone(recorded):
        assert time.monotonic() < deadline, "the stage's process outlived its command"
        time.sleep(0.05)
    assert client.get_run(running[0].info.run_id).info.status == "RUNNING"
    # Not the memo's settings, so the cell trains and opens a run (a cell read back opens none).
    code, _, err = call(project, "stage", "tune", "--attack", "badclip", "--defense", "rvpt", "-S", "defenses.rvpt.epochs=3")
    assert code == 0, err
    assert client.get_run(running[0].info.run_id).info.status == "KILLED"


def test_a_hand_run_stage_respects_the_dvc_lock(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    (project / ".dvc" / "tmp").mkdir(exist_ok=True)
    before = tree(project / "data")
    held = zc.lockfile.LockFile(str(project / ".dvc" / "tmp" / "lock"))  # what a running `dvc repro` holds
    try:
        code, _, err = call(project, "stage", "sample", "-S", "sample.shots=2")
        assert code == 2 and ".dvc/tmp/lock is held" in one_error_line(err)
    finally:
        held.close()
    sleeper = subprocess.Popen(["sleep", "60"])  # a live dvc process writing an output of this project
    try:
        (project / ".dvc" / "tmp" / "rwlock").write_text(json.dumps(
            {"write": {str(project / "data" / "fewshot"): {"pid": sleeper.pid, "cmd": "dvc repro"}}}))
        code, _, err = call(project, "stage", "sample", "-S", "sample.shots=2")
        assert code == 2 and f"pid {sleeper.pid}" in one_error_line(err)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert tree(project / "data") == before
    code, _, err = call(project, "stage", "sample", "-S", "sample.shots=2")  # the writer is gone: the stage runs
    assert code == 0, err
