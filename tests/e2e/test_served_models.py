"""Each defended cell is an MLflow model: registered as rvpt-<attack>-<defense>, loaded by
`mlflow.pyfunc.load_model` with the CA evaluate reports, served by `mlflow models serve`, and
logged as code, so loading it unpickles nothing."""
import base64
import json
import subprocess
import time
import urllib.request

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import BIN, copy_of, environment, free_port


@pytest.fixture
def store(reproduced, tmp_path, monkeypatch):
    project = copy_of(reproduced, tmp_path)
    uri, previous = f"sqlite:///{project / 'mlflow.db'}", mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield project
    mlflow.set_tracking_uri(previous)


def test_every_cell_is_a_registered_model_with_the_ca_evaluate_reports(store):
    test = pq.read_table(store / "data" / "clean" / "downstream" / "test.parquet")
    images = pd.DataFrame({"image": test.column("image").to_pylist()})
    labels = test.column("label").to_pylist()
    rows = json.loads((store / "results" / "summary.json").read_text())["rows"]
    client = mlflow.MlflowClient()
    for attack in ("badnet", "badclip"):
        for defense in ("rvpt", "cleanclip"):
            [version] = client.search_model_versions(f"name = 'rvpt-{attack}-{defense}'")
            tune = json.loads((store / "defended" / defense / attack / "tune.json").read_text())
            assert version.run_id == tune["mlflow_run_id"]
            model = mlflow.pyfunc.load_model(f"models:/rvpt-{attack}-{defense}/{version.version}")
            probabilities = model.predict(images)
            assert list(probabilities.columns) == ["zero", "one", "two", "three"]
            assert probabilities.sum(axis=1).sub(1).abs().max() < 1e-6
            accuracy = (probabilities.to_numpy().argmax(1) == labels).mean()
            [row] = [r for r in rows if (r["attack"], r["defense"]) == (attack, defense)]
            assert accuracy == pytest.approx(row["clean_accuracy"], abs=1 / len(labels) + 1e-9), (attack, defense)
    [logged] = client.search_model_versions("name = 'rvpt-badnet-rvpt'")
    files = {f.path for f in mlflow.artifacts.list_artifacts(f"models:/rvpt-badnet-rvpt/{logged.version}")}
    assert "python_model.pkl" not in files and "MLmodel" in files  # logged as code, not pickled


def test_mlflow_models_serve_answers_with_the_loaded_models_probabilities(store):
    test = pq.read_table(store / "data" / "clean" / "downstream" / "test.parquet")
    blobs = test.column("image").to_pylist()[:5]
    expected = mlflow.pyfunc.load_model("models:/rvpt-badnet-rvpt/1").predict(pd.DataFrame({"image": blobs}))
    port = free_port()
    env = environment({"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"})
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/rvpt-badnet-rvpt/1",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=store, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the model server did not come up"
                time.sleep(0.5)
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b).decode()] for b in blobs]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        answered = pd.DataFrame(json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert list(answered.columns) == list(expected.columns)
    assert (answered - expected).abs().max().max() < 1e-6


def test_each_training_run_names_its_data_by_dvcs_hash(store):
    """A run's dataset inputs carry the hash dvc.lock records for the output that holds them."""
    lock = yaml.safe_load((store / "dvc.lock").read_text())["stages"]
    [fewshot] = [o["md5"] for o in lock["sample"]["outs"] if o["path"] == "data/fewshot"]
    [corpus] = [o["md5"] for o in lock["poison@badnet"]["outs"] if o["path"] == "data/poisoned/badnet"]
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("smoke").experiment_id
    for stage, name, digest in (("tune@badnet-rvpt", "defender's shots", fewshot),
                                ("pretrain@badnet", "corpus poisoned by badnet", corpus)):
        [run] = client.search_runs([experiment], f"attributes.run_name = '{stage}'")  # a tune run per cell
        [given] = run.inputs.dataset_inputs
        assert (given.dataset.name, given.dataset.digest) == (name, digest.removesuffix(".dir")), stage
