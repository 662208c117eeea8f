"""Each defended cell is an MLflow model: registered as rvpt-<attack>-<defense>, loaded by
`mlflow.pyfunc.load_model` with the CA evaluate reports, served by `mlflow models serve`, and
logged as code, so loading it unpickles nothing."""
import base64
import json
import subprocess
import urllib.error
import urllib.request

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import BIN, REPO, copy_of, environment, free_port, serving


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


def readme_curl() -> str:
    """The README's curl against `mlflow models serve`, as a user copies it."""
    text = (REPO / "README.md").read_text()
    start = text.index("curl -s http://127.0.0.1:5001/invocations")
    return text[start:text.index("```", start)].strip()


def test_mlflow_models_serve_answers_the_readmes_curl_and_names_a_bad_request(store):
    test = pq.read_table(store / "data" / "clean" / "downstream" / "test.parquet")
    blob = test.column("image").to_pylist()[0]
    expected = mlflow.pyfunc.load_model("models:/rvpt-badnet-rvpt/latest").predict(pd.DataFrame({"image": [blob]}))
    (store / "photo.png").write_bytes(blob)
    port = free_port()
    env = environment({"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"})
    command = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/rvpt-badnet-rvpt/latest", "--env-manager",
               "local", "-h", "127.0.0.1", "-p", str(port)]
    with serving(command, store, port, env):
        curl = readme_curl().replace("127.0.0.1:5001", f"127.0.0.1:{port}")
        answered = subprocess.run(["bash", "-c", curl], cwd=store, capture_output=True, text=True, check=True)
        predictions = pd.DataFrame(json.loads(answered.stdout)["predictions"])
        bad = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"not an image").decode()]]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(bad).encode(),
                                         {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
    assert list(predictions.columns) == list(expected.columns)
    assert (predictions - expected).abs().max().max() < 1e-6
    assert refused.value.code == 400 and "row 0: not a decodable image" in refused.value.read().decode()


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
