"""Property: any params file and any command-line values are either accepted, or refused with exit
code 2, one line naming the culprit, and nothing written (files or MLflow runs)."""
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

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), st.text(max_size=12),
    st.lists(st.one_of(st.integers(-3, 5), st.text(max_size=6)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 5), max_size=2))
OPTION_TEXT = st.one_of(st.integers(-2 ** 40, 2 ** 40).map(str), st.integers(-3, 40).map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=10))


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


COMMANDS = st.one_of(
    st.tuples(st.just(["stage", "sample"]), st.lists(st.tuples(st.just("--shots"), OPTION_TEXT), max_size=1)),
    st.tuples(st.just(["stage", "poison", "--attack", "badnet"]),
              st.lists(st.tuples(st.sampled_from(["--rate", "--target"]), OPTION_TEXT), max_size=2)),
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
    files = {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
             if p.is_file() and p.parts[len(root.parts)] not in ("mlflow.db", "mlruns", "fuzz.yaml")}
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())
    return files, runs


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=VALUES, delete=st.booleans(), mutate=st.booleans(), command=COMMANDS)
def test_any_params_or_options_are_accepted_or_refused_cleanly(workspace, path, value, delete, mutate, command):
    params = mutated(path, value, delete) if mutate else BASE
    (workspace / "fuzz.yaml").write_text(yaml.safe_dump(params))
    words, options = command
    argv = [*words, "--params", "fuzz.yaml", *[part for option in options for part in option]]
    before = state(workspace)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = invoke(argv)
    assert code in (0, 2), (argv, params if mutate else None, err.getvalue())
    event(f"{words[1]} exit {code}")
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rvpt: error:"), (argv, err.getvalue())
        assert state(workspace) == before, argv
