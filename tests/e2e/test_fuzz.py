"""Property: any params file and any command-line values are either accepted, or refused with exit
code 2, one line of under 500 characters naming the culprit, and nothing written (files or MLflow
runs). The inputs include names that are paths, inf and NaN, huge sizes, YAML alias bombs and
params paths that are no files."""
import contextlib
import copy
import io
import os

import mlflow
import pytest
import yaml
from conftest import smoke_params
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.cli import invoke

HUGE = st.sampled_from([10 ** 6, 10 ** 9, 2 ** 63, 10 ** 20, 1e308, -1e308, float("inf"), float("-inf"), float("nan")])
NAMES = st.one_of(st.sampled_from(["x/../../..", "..", ".", "/abs", "a/b", "a\\b", "", "*", "[ab]", "clean", "UPPER",
                                   "a-b", "nul\x00", "ok_name", "badnet", "rvpt"]), st.text(max_size=8))
VALUES = st.one_of(
    HUGE, NAMES, st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), st.text(max_size=12),
    st.lists(st.one_of(st.integers(-3, 5), st.text(max_size=6)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 5), max_size=2))
OPTION_TEXT = st.one_of(st.integers(-2 ** 40, 2 ** 40).map(str), st.integers(-3, 40).map(str), HUGE.map(repr),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=10), NAMES)


def leaf_paths(tree: dict, prefix=()) -> list[tuple]:
    paths = []
    for key, value in tree.items():
        paths.append(prefix + (key,))
        if isinstance(value, dict):
            paths += leaf_paths(value, prefix + (key,))
    return paths


BASE = smoke_params()
PATHS = leaf_paths(BASE)


def mutated(path: tuple, value, delete: bool) -> dict:
    params = copy.deepcopy(BASE)
    node = params
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return params


def renamed(section: str, old: str, new) -> dict:
    """The params with one attack or defense renamed (and run: selecting it by its new name)."""
    params = copy.deepcopy(BASE)
    params[section][new] = params[section].pop(old)
    params["run"][section] = [new]
    return params


def bombed(path: tuple, levels: int) -> str:
    """The params as YAML text with the value at `path` replaced by an alias bomb of 10**levels values."""
    anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    text = yaml.safe_dump(mutated(path, "BOMB_GOES_HERE", False))
    return "\n".join(anchors) + "\n" + text.replace("BOMB_GOES_HERE", f"*a{levels - 1}")


PARAMS_TEXT = st.one_of(
    st.builds(lambda path, value, delete: yaml.safe_dump(mutated(path, value, delete)),
              st.sampled_from(PATHS), VALUES, st.booleans()),
    st.builds(lambda pair, name: yaml.safe_dump(renamed(*pair, name)),
              st.sampled_from([("attacks", "badnet"), ("defenses", "rvpt")]), NAMES),
    st.builds(bombed, st.sampled_from(PATHS), st.integers(1, 9)),
    st.just(yaml.safe_dump(BASE)),
)
# Where --params points: the fuzzed file, or something that is no params file at all.
PARAMS_PATH = st.sampled_from(["fuzz.yaml"] * 6 + ["folder.yaml", "/dev/zero", "missing.yaml"])


# -S KEY=VALUE: keys the stages read, and some that name nothing; values of any shape, or no `=`.
KEYS = st.sampled_from(["sample.shots", "attacks.badnet.rate", "attacks.badnet.target", "defenses.rvpt.alpha",
                        "defenses.rvpt.epochs", "defenses.rvpt.tokens", "defenses.rvpt.first_block", "defenses.rvpt.lr",
                        "tune.seed", "run.defenses", "nonsense.key", "defenses.rvpt", ""])
SETTINGS = st.one_of(st.builds(lambda key, text: ("-S", f"{key}={text}"), KEYS, OPTION_TEXT),
                     st.builds(lambda text: ("-S", text), st.text(max_size=12)))
COMMANDS = st.one_of(
    st.tuples(st.just(["stage", "sample"]), st.lists(SETTINGS, max_size=1)),
    st.tuples(st.just(["stage", "poison"]),
              st.lists(st.one_of(st.tuples(st.just("--attack"), OPTION_TEXT), SETTINGS), max_size=2)),
    st.tuples(st.just(["stage", "tune"]),
              st.lists(st.one_of(st.tuples(st.sampled_from(["--attack", "--defense"]), OPTION_TEXT), SETTINGS),
                       max_size=3)),
    st.tuples(st.sampled_from([["stage", "evaluate"], ["stage", "pretrain", "--attack", "badnet"], ["stage", "check"]]),
              st.just([])),
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A project with the clean data made (by the real download stage), run in this process."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "params.yaml").write_text(yaml.safe_dump(BASE))
    (root / "folder.yaml").mkdir()
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    try:
        assert invoke(["stage", "download"]) == 0
        yield root
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def state(root):
    files = {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
             for p in root.rglob("*") if p.parts[len(root.parts)] not in ("mlflow.db", "mlruns", "fuzz.yaml")}
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())
    return files, runs


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=PARAMS_TEXT, params_path=PARAMS_PATH, command=COMMANDS)
def test_any_params_or_options_are_accepted_or_refused_cleanly(workspace, text, params_path, command):
    (workspace / "fuzz.yaml").write_text(text)
    words, options = command
    argv = [*words, "--params", params_path, *[part for option in options for part in option]]
    before = state(workspace)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = invoke(argv)
    assert code in (0, 2), (argv, text[:2000], err.getvalue()[:2000])
    event(f"{words[1]} exit {code}")
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rvpt: error:"), (argv, err.getvalue()[:2000])
        assert len(lines[0]) < 500, (argv, lines[0][:1000])
        assert state(workspace) == before, argv


# Names DVC would paste into a shell command and an output path: metacharacters, paths, quotes,
# and any short text. The marker is a file a successful injection would create.
SHELL_NAMES = st.one_of(
    st.sampled_from(["x;touch {marker}", "$(touch {marker})", "`touch {marker}`", "x&&touch {marker}",
                     "x|touch {marker}", "'; touch {marker}; '", "x\ntouch {marker}", "../mlruns", "../../.rvpt",
                     "..", "mlflow.db/..", "a b", "-rf", "--params=/dev/zero"]),
    st.text(min_size=1, max_size=10)).filter(lambda name: not plain_name(name))  # a plain name simply runs


def plain_name(name: str) -> bool:
    from pipeline.store.paths import check_name
    from rvpt.errors import BadInput

    try:
        check_name(name, "name")
    except BadInput:
        return False
    return True


@pytest.fixture(scope="module")
def dvc_project(reproduced, tmp_path_factory):
    from conftest import copy_of

    return copy_of(reproduced, tmp_path_factory.mktemp("fuzz-dvc"))


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=SHELL_NAMES, role=st.sampled_from(["attacks", "defenses"]))
def test_dvc_repro_on_any_name_runs_nothing_and_deletes_nothing(dvc_project, name, role):
    import subprocess

    from conftest import BIN, environment, tree

    marker = dvc_project.parent / "PWNED"
    name = name.replace("{marker}", str(marker))
    original = (dvc_project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params[role][name] = params[role]["badnet" if role == "attacks" else "rvpt"]
    params["run"][role].append(name)
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = {k: v for k, v in tree(dvc_project).items() if not k.startswith(".dvc/tmp")}
    try:
        result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=dvc_project, env=environment(), capture_output=True,
                                text=True, timeout=300)
        after = {k: v for k, v in tree(dvc_project).items() if not k.startswith(".dvc/tmp")}
    finally:
        (dvc_project / "params.yaml").write_text(original)
    assert result.returncode != 0, name
    assert not marker.exists(), name
    assert after == before, name  # mlruns/ and mlflow.db included
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    if result.returncode and ran:  # refused at check, in rvpt's words, before any other stage ran
        assert ran == ["Running stage 'check':"] and "failed to reproduce 'check'" in result.stderr, result.stdout
        assert sum(line.startswith("rvpt: error: ") for line in result.stderr.splitlines()) == 1
    elif result.returncode:  # DVC refused the pipeline itself (`..` makes outputs overlap): nothing ran
        event("refused by DVC before any stage")


def special_file(root, kind: str) -> str:
    """A path of the given kind in `root`: no regular file (or no file at all)."""
    import socket

    path = root / f"special-{kind}.tar.gz"
    if kind == "fifo" and not path.exists():
        os.mkfifo(path)
    elif kind == "socket" and not path.exists():
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))  # left bound: a socket file that no one reads from
    elif kind == "folder":
        path.mkdir(exist_ok=True)
    return {"zero": "/dev/zero", "random": "/dev/urandom", "missing": str(root / "no-such-file")}.get(kind, str(path))


PATH_OPTIONS = st.sampled_from([
    (["scan", "--model", "model", "--out", "out", "--data"], "--data"),
    (["scan", "--data", "images", "--out", "out", "--model"], "--model"),
    (["defend", "--data", "images", "--out", "out", "--no-track", "--model"], "--model"),
    (["defend", "--model", "model", "--out", "out", "--no-track", "--data"], "--data"),
    (["defend", "--model", "weights.safetensors", "--data", "images", "--out", "out", "--no-track", "--config"],
     "--config"),
    (["defend", "--model", "model", "--data", "images", "--out", "out", "--no-track", "--classnames"], "--classnames"),
    (["calibrate", "--summary"], "--summary"),
    (["stage", "sample", "--params"], "--params"),
])


@pytest.fixture(scope="module")
def brought_root(tmp_path_factory):
    from conftest import brought_files

    root = tmp_path_factory.mktemp("fuzz-paths")
    brought_files(root, ["zero", "one", "two"])
    (root / "weights.safetensors").write_bytes((root / "model" / "open_clip_model.safetensors").read_bytes())
    (root / "params.yaml").write_text(yaml.safe_dump(BASE))
    return root


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(command=PATH_OPTIONS, kind=st.sampled_from(["zero", "random", "fifo", "socket", "folder", "missing"]))
def test_a_path_option_given_no_regular_file_is_refused_in_a_moment(brought_root, command, kind):
    import threading
    import time

    from conftest import call, one_error_line

    words, option = command
    argv = [*words, special_file(brought_root, kind)]
    if words[0] in ("scan", "defend"):
        argv += ["--cache", str(brought_root / "cache")]
    outcome, started = [], time.monotonic()
    worker = threading.Thread(target=lambda: outcome.append(call(brought_root, *argv)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert outcome, f"{argv} still running after 30 s"
    code, _, err = outcome[0]
    event(f"{option} {kind} exit {code}")
    assert code == 2, (argv, err)
    one_error_line(err)
    assert time.monotonic() - started < 5, argv
    assert not (brought_root / "out").exists() and not list((brought_root / "cache").rglob("*.png"))
