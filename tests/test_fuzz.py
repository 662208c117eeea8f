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


COMMANDS = st.one_of(
    st.tuples(st.just(["stage", "sample"]), st.lists(st.tuples(st.just("--shots"), OPTION_TEXT), max_size=1)),
    st.tuples(st.just(["stage", "poison"]),
              st.lists(st.tuples(st.sampled_from(["--attack", "--rate", "--target"]), OPTION_TEXT), max_size=2)),
    st.tuples(st.just(["stage", "tune"]),
              st.lists(st.tuples(st.sampled_from(["--attack", "--defense", "--shots", "--alpha", "--epochs", "--tokens",
                                                  "--first-block", "--lr"]), OPTION_TEXT), max_size=3)),
    st.tuples(st.sampled_from([["stage", "evaluate"], ["stage", "pretrain", "--attack", "badnet"]]),
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
