"""The red team's cases, each as a user would meet it: a hostile params.yaml under `dvc repro`,
loose types, a key given twice, a config nested without end, a full disk, a tracking server that
is not MLflow. Each is refused with exit 2 (or, under `dvc repro`, DVC stopping at `check` with
rvpt's line) and one line, and changes no file of the project, MLflow's store included."""
import http.server
import os
import resource
import sqlite3
import subprocess
import threading
import time

import pytest
import yaml
from conftest import BIN, copy_of, environment
from hostile import brought_folder, one_error_line, refused_at_once, without_dvc_scratch

CLASSES = ["zero", "one", "two"]


@pytest.fixture
def brought(tmp_path):
    return brought_folder(tmp_path / "brought", CLASSES)


@pytest.fixture
def hostile(reproduced, tmp_path):
    """A copy of the reproduced smoke project and a marker path a shell injection would create."""
    return copy_of(reproduced, tmp_path), tmp_path / "PWNED"


def edit_params(project, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_repro(project, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), "repro", *argv], cwd=project, env=environment(), capture_output=True,
                          text=True, timeout=timeout)


def rvpt_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("rvpt: error: ")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("name", ["x;touch {marker}", "../mlruns", "$(touch {marker})", "../../.rvpt"])
@pytest.mark.parametrize("role", ["attacks", "defenses"])
def test_a_name_that_dvc_would_paste_into_a_shell_or_a_path_stops_dvc_repro_at_check(hostile, role, name):
    project, marker = hostile
    name = name.format(marker=marker)

    def define(params):
        params[role][name] = params[role]["badnet" if role == "attacks" else "rvpt"]
        params["run"][role].append(name)

    edit_params(project, define)
    before = without_dvc_scratch(project)
    result = dvc_repro(project)
    assert result.returncode != 0
    assert "'check'" in result.stderr and repr(name)[:12] in rvpt_line(result.stdout + result.stderr)
    assert not marker.exists()
    assert without_dvc_scratch(project) == before  # mlruns/ and mlflow.db included


def test_rvpt_repro_reads_params_before_dvc_parses_them(hostile):
    project, _ = hostile
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + \
        [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = (project / "params.yaml").read_text()
    cases = {"bomb": "\n".join(bomb) + "\n" + text.replace("templates:", "templates: *a8\n  x:", 1),
             "fifo": None}
    for case, content in cases.items():
        (project / "params.yaml").unlink()
        if content is None:
            os.mkfifo(project / "params.yaml")
        else:
            (project / "params.yaml").write_text(content)
        before = without_dvc_scratch(project)
        started = time.monotonic()
        result = subprocess.run([str(BIN / "rvpt"), "repro"], cwd=project, env=environment(), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2, (case, result.stderr)
        assert ("aliases" if case == "bomb" else "not a regular file") in one_error_line(result.stderr)
        assert time.monotonic() - started < 30 and without_dvc_scratch(project) == before
    (project / "params.yaml").unlink()
    (project / "params.yaml").write_text(text)
    result = subprocess.run([str(BIN / "rvpt"), "repro", "--dry"], cwd=project, env=environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stderr  # the rest is dvc repro


@pytest.mark.parametrize("edit, culprit", [
    (lambda p: p["defenses"]["rvpt"].update(epochs=True), "defenses.rvpt.epochs: Input should be a valid integer"),
    (lambda p: p["defenses"]["rvpt"].update(epochs="50"), "defenses.rvpt.epochs: Input should be a valid integer"),
    (lambda p: p["defenses"]["rvpt"].update(lr="0.002"), "defenses.rvpt.lr: Input should be a valid number"),
    (lambda p: p["attacks"]["badnet"]["options"].update(size=True), "options.size: True is not a float"),
    (lambda p: p["tracking"].update(experiment="\0"), "tracking.experiment: '\\x00' holds a control character"),
    (lambda p: p["data"]["classes"].__setitem__(0, "ze\nro"), "holds a control character"),
    (lambda p: p["run"].update(defenses=["rvpt", "rvpt"]), "run.defenses: 'rvpt' is listed twice"),
])
def test_loose_types_and_control_characters_are_refused(hostile, edit, culprit):
    project, _ = hostile
    edit_params(project, edit)
    assert culprit in refused_at_once(project, "stage", "tune", "--attack", "badnet", "--defense", "rvpt")


def test_a_key_given_twice_is_refused_not_silently_overridden(hostile):
    project, _ = hostile
    lines = (project / "params.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("lr: "))
    indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
    lines.insert(at, f"{indent}lr: 50.0")  # the same key once more, in the same mapping
    (project / "params.yaml").write_text("\n".join(lines) + "\n")
    assert "given twice" in refused_at_once(project, "stage", "sample")


def test_an_open_clip_config_nested_without_end_is_refused_in_one_line(brought, hostile):
    deep = '{"model_cfg": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (brought / "model" / "open_clip_config.json").write_text(deep)
    line = refused_at_once(brought, "defend", "--model", "model", "--data", "images", "--out", "x", "--no-track",
                           "--cache", str(brought / "cache"))
    assert "nested deeper than 64 levels" in line
    project, _ = hostile
    (project / "models" / "badnet" / "open_clip_config.json").write_text(deep)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["defenses"]["rvpt"]["epochs"] = 3  # a cell the memo does not hold, so its model is read
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert "nested deeper" in refused_at_once(project, "stage", "tune", "--attack", "badnet", "--defense", "rvpt")


def test_a_summary_that_is_no_text_is_refused_in_one_line(tmp_path):
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 4)
    assert "not UTF-8 text" in refused_at_once(tmp_path, "calibrate", "--summary", "binary.json")


def test_evaluate_checks_that_results_can_be_written_before_its_work(hostile):
    project, _ = hostile
    for path in sorted((project / "results").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (project / "results").rmdir()
    (project / "results").symlink_to("/proc/self/fdinfo")  # a folder no one can write in, even root
    assert "cannot write in results" in refused_at_once(project, "stage", "evaluate")


def test_a_full_disk_while_tuning_is_one_line_and_the_run_is_marked_failed(hostile):
    project, _ = hostile
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["startup"]["warm_s"] = 0  # the limit below applies to this process, not to a warm server's fork
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    store = project / "mlflow.db"
    # Room for MLflow's store to grow a little, none for the fine-tuned model (6 MB of weights).
    limit = store.stat().st_size + (2 << 20)
    result = subprocess.run([str(BIN / "rvpt"), "stage", "tune", "--attack", "badnet", "--defense", "finetune"],
                            cwd=project, env=environment(), capture_output=True, text=True, timeout=600,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert result.returncode == 2, result.stderr
    assert "a file grew past the size limit" in rvpt_line(result.stderr) and "Traceback" not in result.stderr
    assert not (project / "defended" / "finetune").exists()  # not even the folder made for the cell
    assert not [p for p in (project / "defended").iterdir() if ".rvpt-tmp-" in p.name]
    with sqlite3.connect(store) as db:
        status = db.execute("SELECT r.status FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                            "WHERE t.key = 'mlflow.runName' AND t.value = 'tune@badnet-finetune'").fetchall()
    assert status == [("FAILED",)]


class NotMlflow(http.server.BaseHTTPRequestHandler):
    """A web server that is not MLflow: every path is a 404 page, /health included."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_error(404)

    def log_message(self, *args):  # quiet: its lines would mix with the command's on stderr
        pass


def test_a_tracking_url_that_answers_but_is_not_mlflow_is_refused(hostile, monkeypatch):
    project, _ = hostile
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        assert "not as an MLflow tracking server (HTTP 404" in refused_at_once(project, "stage", "sample")
    finally:
        server.shutdown()
