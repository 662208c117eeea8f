"""Stages forked from a warm server (pipeline/commands/warm.py) behave as cold ones: same outputs byte for
byte, same exit codes and messages; a killed caller takes its stage with it; an edit to the code
starts a new server."""
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import torch
import yaml
from safetensors.torch import load_file

from conftest import BIN, copy_of, environment, one_error_line
from pipeline.commands import warm

TUNE = ["stage", "tune", "--attack", "badnet", "--defense", "rvpt", "-S", "defenses.rvpt.epochs=3"]  # not the memo's


def private(tmp_path: Path, *projects: Path) -> dict:
    """An environment whose warm servers live in a folder of this test's own, and exit 20 s after
    the test's last stage (the projects' startup.warm_s)."""
    for project in projects:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["startup"]["warm_s"] = params["startup"]["warm_s"] and 20
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return environment({"XDG_RUNTIME_DIR": str(runtime)})


def served(env: dict) -> list[str]:
    """The command lines the servers in this environment's folder have forked for."""
    logs = Path(env["XDG_RUNTIME_DIR"], f"rvpt-warm-{os.getuid()}").glob("*.log")
    return [line for log in logs for line in log.read_text().splitlines() if " pid " in line]


def rvpt(project: Path, env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "rvpt"), *argv], cwd=project, env=env, capture_output=True, text=True)


def without_timing(output: str) -> list[str]:
    return [line.rsplit(" (", 1)[0] for line in output.splitlines() if line.startswith("rvpt ")]


def test_a_warm_stage_writes_what_a_cold_one_does(reproduced, tmp_path):
    cold, hot = (copy_of(reproduced, tmp_path / name) for name in ("cold", "warm"))
    params = yaml.safe_load((cold / "params.yaml").read_text())
    assert params["startup"]["warm_s"] > 0  # the default starts warm
    params["startup"]["warm_s"] = 0
    (cold / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = private(tmp_path, cold, hot)
    results = [rvpt(project, env, *TUNE) for project in (cold, hot)]
    for result in results:
        assert result.returncode == 0, result.stderr
    assert without_timing(results[0].stdout) == without_timing(results[1].stdout)
    assert [line.split(": ", 1)[1] for line in served(env)] == [f"rvpt {' '.join(TUNE)} in {hot}"]
    folder = "defended/rvpt/badnet"
    ours, theirs = (load_file(p / folder / "prompts.safetensors") for p in (hot, cold))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (hot / folder / "loss.csv").read_bytes() == (cold / folder / "loss.csv").read_bytes()

    refused = rvpt(hot, env, "stage", "tune", "--attack", "nope")
    assert refused.returncode == 2 and refused.stderr.startswith("rvpt: error: --attack: 'nope'"), refused.stderr
    assert len(served(env)) == 2


def test_a_killed_caller_takes_its_stage_with_it(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    env = private(tmp_path, project)
    caller = subprocess.Popen([str(BIN / "rvpt"), *TUNE, "-S", "defenses.rvpt.epochs=5000"], cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not served(env):
        assert time.monotonic() < deadline and caller.poll() is None, "no server forked the stage"
        time.sleep(0.2)
    stage = psutil.Process(int(served(env)[0].split(" pid ")[1].split(":")[0]))
    assert stage.is_running() and stage.cwd() == str(project)
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    stage.wait(timeout=10)  # psutil.TimeoutExpired if the stage outlived its caller


def test_an_edit_to_the_code_changes_the_servers_name(tmp_path):
    (tmp_path / "module.py").write_text("x = 1\n")
    before = warm.fingerprint([tmp_path])
    assert warm.fingerprint([tmp_path]) == before
    (tmp_path / "module.py").write_text("x = 22\n")
    assert warm.fingerprint([tmp_path]) != before


def test_a_hostile_params_file_is_refused_before_any_server_is_asked(tmp_path):
    """The client reads startup.warm_s as warily as the command reads params: a FIFO (which would
    block a plain read) or an alias bomb gets the command's own one-line refusal, exit 2."""
    env = private(tmp_path)
    os.mkfifo(tmp_path / "fifo.yaml")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "bomb.yaml").write_text(bomb)
    for name, said in (("fifo.yaml", "not a regular file"), ("bomb.yaml", "values")):
        refused = subprocess.run([str(BIN / "rvpt"), "stage", "sample", "--params", name], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and said in one_error_line(refused.stderr), refused.stderr
    assert not served(env)
