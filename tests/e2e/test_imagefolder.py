"""Your own ImageFolder data: `rvpt profile imagefolder` writes a params.yaml that `dvc repro`
runs with no edits, and no corpus or defender image is also a downstream image."""
import hashlib
import json
import shutil

import pyarrow.parquet as pq
import yaml

import fabricate
from conftest import make_project, run, smoke_params

FOLDERS = {"cat_a": "zero", "dog_b": "one", "eel_c": "two"}


def user_tree(root):
    """train/ and test/ only, as a user's photos come; one test image also sits in train/ under a new name."""
    fabricate.image_folder(root, FOLDERS, {"train": 40, "test": 5})
    shutil.copy(next((root / "test" / "dog_b").iterdir()), root / "train" / "dog_b" / "copied_from_test.jpg")
    return root


def hashes(path):
    table = pq.read_table(path, columns=["image"]) if path.is_file() else pq.ParquetDataset(str(path)).read(["image"])
    return [hashlib.sha256(blob).hexdigest() for blob in table.column("image").to_pylist()]


def test_profile_writes_params_that_dvc_repro_runs(tmp_path):
    project = make_project(tmp_path / "project", smoke_params())
    tree = user_tree(tmp_path / "photos")
    result = run(["rvpt", "profile", "imagefolder", "--root", str(tree), "--target", "dog_b",
                  "--attacks", "badnet", "--defenses", "none,rvpt"], project)
    assert "wrote params.yaml for profile imagefolder (3 classes)" in result.stdout
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["classes"] == {"cat_a": "cat a", "dog_b": "dog b", "eel_c": "eel c"}
    assert params["target"] == "dog b" and all("target" not in a for a in params["attacks"].values())
    assert params["data"]["transfer_classes"] == params["data"]["concepts"] == []
    # 41 train images in the smallest class: a fifth each for train and val, the rest for the corpus
    assert (params["data"]["train_per_class"], params["data"]["val_per_class"]) == (8, 8)
    assert params["data"]["corpus_size"] + params["data"]["defender_pairs"] == 121 - 3 * 16
    assert params["defenses"]["rvpt"]["tokens"] == 16  # the tiny ViT's 4 x 4 patch grid
    assert "pretrain.clean.steps" in (project / "params.yaml").read_text().splitlines()[2]

    run(["dvc", "repro"], project)
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    cells = {(row["attack"], row["defense"]) for row in rows}
    assert {("badnet", "none"), ("badnet", "rvpt")} <= cells
    test_images = 3 * 5
    for row in rows:
        correct = row["clean_accuracy"] * test_images
        assert abs(correct - round(correct)) < 1e-6, row  # a share of the 15 test images, not a made-up number
    for page in ("summary.md", "report.html"):  # nothing that belongs to the glyph world or did not run
        text = (project / "results" / page).read_text().lower()
        for word in ("glyph", "nuisance", "transfer task", "cross-task", "caption trigger", "`"):
            assert word not in text, (page, word)


def test_corpus_shares_no_image_with_the_downstream_splits(tmp_path):
    project = make_project(tmp_path / "project", smoke_params())
    tree = user_tree(tmp_path / "photos")
    run(["rvpt", "profile", "imagefolder", "--root", str(tree)], project)
    result = run(["rvpt", "stage", "download"], project)
    clean = project / "data" / "clean"
    excluded = json.loads((clean / "classes.json").read_text())["corpus_excluded"]
    # the 48 images drawn for train and val, and the test image copied into train/
    assert excluded >= 49 and f"({excluded} corpus images excluded" in result.stdout
    pretraining = hashes(clean / "corpus") + hashes(clean / "pairs.parquet")
    assert len(set(pretraining)) == len(pretraining)
    for split in ("train", "val", "test"):
        downstream = set(hashes(clean / "downstream" / f"{split}.parquet"))
        assert downstream and not downstream & set(pretraining), split


def test_a_stage_without_a_terminal_prints_progress_lines(project):
    run(["rvpt", "stage", "download"], project)
    result = run(["rvpt", "stage", "pretrain", "--clean"], project, env={"RVPT_PROGRESS_S": "0.2"})
    lines = [line for line in result.stderr.splitlines() if line.startswith("pretrain clean: ")]
    assert lines, result.stderr
    done, total = lines[-1].split(": ")[1].split(" ")[0].split("/")
    assert int(total) == 20 and 0 < int(done) <= 20 and "it/s, ETA " in lines[-1]
    quiet = run(["rvpt", "stage", "pretrain", "--clean", "-S", "pretrain.clean.steps=5"], project)
    assert "pretrain clean: " not in quiet.stderr  # shorter than the 30 s between lines
