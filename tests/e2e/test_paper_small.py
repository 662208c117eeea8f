"""The real path, small: `rvpt profile paper --small` on the paper's four datasets in their real
layouts (tiny) and a random ViT-B-32-quickgelu where the `openai` tag resolves, then `dvc repro`
through every stage on the CPU, with real DVC and a real MLflow store; and `rvpt profile
imagefolder --small` with a local pretrained weights file. The sizes are small; the code path and
the model (ViT-B/32 at 224 px) are the paper's. To fit CI, the matrix is one of its attacks (BadCLIP:
a trigger optimised against the clean model, then poisoned pairs) by three defenses (none, RVPT's
prompts, CleanCLIP's whole-model fine-tune), and the image-folder run is BadNet by none and RVPT;
bench/device_check.py runs the whole matrix."""
import json
import re

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import fabricate
from conftest import REPO, make_project, run

ATTACKS = ["badclip"]
DEFENSES = ["none", "rvpt", "cleanclip"]
STAGES = ["check", "download", "pretrain", "poison", "sample", "tune", "scan", "evaluate", "report"]


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="module")
def paper_small(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    cache = fabricate.openai_cache(root / "hf")
    arguments = fabricate.paper_data(root / "data", train=6, val=2)
    project = make_project(root / "project", default_params())
    run(["dvc", "config", "cache.type", "hardlink,symlink"], project)  # 600 MB models: linked, not copied
    written = run(["rvpt", "profile", "paper", *arguments, "--small"], project)
    assert "wrote params.yaml for profile paper (3 classes, small)" in written.stdout
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["run"] = {"attacks": ATTACKS, "defenses": DEFENSES}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    reproduced = run(["dvc", "repro"], project, env=env)
    return project, reproduced.stdout


def test_small_changes_sizes_only(tmp_path):
    """--small shrinks counts, steps, epochs and batch sizes; it never changes what runs."""
    arguments = fabricate.paper_data(tmp_path / "data")
    full, small = (make_project(tmp_path / name, default_params()) for name in ("full", "small"))
    run(["rvpt", "profile", "paper", *arguments], full)
    run(["rvpt", "profile", "paper", *arguments, "--small"], small)
    sizes = {"threads", "corpus_size", "defender_pairs", "train_per_class", "val_per_class", "test_per_class",
             "shard_rows", "checkpoint_every", "steps", "batch_size", "warmup", "images", "epochs", "budget",
             "shots", "workers", "layer_images", "probe_steps", "adjust_every", "check_images", "held_out"}

    def leaves(tree, path=()):
        for key, value in tree.items():
            yield from leaves(value, (*path, key)) if isinstance(value, dict) else [((*path, key), value)]

    before, after = (dict(leaves(yaml.safe_load((p / "params.yaml").read_text()))) for p in (full, small))
    assert before.keys() == after.keys()
    changed = {path for path in before if before[path] != after[path]}
    assert changed and {path[-1] for path in changed} <= sizes, changed
    assert all(after[p] <= before[p] for p in changed), "--small only shrinks"


def test_every_stage_runs_on_vit_b32_at_224_px(paper_small):
    project, log = paper_small
    for stage in STAGES:
        assert f"rvpt stage {stage}" in log, stage
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["model"]["name"] == "ViT-B-32-quickgelu" and params["data"]["image_size"] == 224
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    cells = {(r["attack"], r["defense"]) for r in rows}
    assert cells == {(a, d) for a in ATTACKS for d in ["clean_model", *DEFENSES]}
    for row in rows:
        assert 0 <= row["clean_accuracy"] <= 1 and 0 <= row["attack_success_rate"] <= 1, row
        assert row["caltech101_clean_accuracy"] is not None and row["oxford_pets_clean_accuracy"] is not None, row
    scans = json.loads((project / "scans" / "scans.json").read_text())["models"]
    assert {"clean_model", *ATTACKS} <= set(scans)
    report = (project / "results" / "report.html").read_text()
    assert "<td>rvpt</td>" in report and "<script" not in report and not re.search(r"src=[\"']?https?:", report)


def test_registered_models_load_through_mlflow_pyfunc(paper_small, monkeypatch):
    project, _ = paper_small
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        test = pq.read_table(project / "data" / "clean" / "downstream" / "test.parquet")
        images = pd.DataFrame({"image": test.column("image").to_pylist()})
        names = {m.name for m in mlflow.MlflowClient().search_registered_models()}
        assert names == {f"rvpt-{a}-{d}" for a in ATTACKS for d in DEFENSES}
        for name in ("rvpt-badclip-rvpt", "rvpt-badclip-cleanclip", "rvpt-badclip-none"):
            probabilities = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(images)
            assert list(probabilities.columns) == ["banana", "Granny Smith", "chainlink fence"]
            assert probabilities.sum(axis=1).sub(1).abs().max() < 1e-5
        client = mlflow.MlflowClient()
        defended, undefended = client.get_model_version("rvpt-badclip-rvpt", "1"), \
            client.get_model_version("rvpt-badclip-none", "1")
        assert defended.description.startswith(("Backdoor ", "Its attack did not implant"))
        assert defended.tags["undefended"] == "false" and undefended.tags["undefended"] == "true"
        # A cell refers to its backbone, logged once by its attack's pretrain run: a ViT-B/32 (600 MB)
        # for the clean model, each attack and each whole-model (CleanCLIP) cell, not one for every cell.
        stored = sum(f.stat().st_size for f in (project / "mlruns").rglob("*") if f.is_file())
        assert stored < (1 + 2 * len(ATTACKS)) * 650e6, stored
    finally:
        mlflow.set_tracking_uri(previous)


def test_your_own_images_with_local_pretrained_weights(tmp_path):
    cache = fabricate.openai_cache(tmp_path / "hf")
    weights = next(cache.rglob("open_clip_model.safetensors"))
    photos = fabricate.image_folder(tmp_path / "photos", {"cat_a": "zero", "dog_b": "one", "eel_c": "two"},
                                    {"train": 12, "test": 2})
    project = make_project(tmp_path / "project", default_params())
    run(["dvc", "config", "cache.type", "hardlink,symlink"], project)
    run(["rvpt", "profile", "imagefolder", "--root", str(photos), "--model", "ViT-B-32-quickgelu",
         "--pretrained", str(weights), "--attacks", "badnet", "--defenses", "none,rvpt",
         "--small"], project)
    run(["dvc", "repro"], project)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert {(r["attack"], r["defense"]) for r in rows} == \
        {("badnet", d) for d in ("clean_model", "none", "rvpt")}
    clean = json.loads((project / "models" / "clean" / "pretrain.json").read_text())
    assert clean["pretrained"] == str(weights)
