"""The real-data path end to end on fabricated data: an ImageFolder tree (ImageNet's layout, with
a cross-task set fetched as a sha256-checked tar.gz URL) and img2dataset shards."""
import hashlib
import json
import tarfile

import open_clip
import pyarrow.parquet as pq
import pytest
import yaml

import fabricate
from conftest import NO_GLYPH_WORLD, independent_accuracy, make_project, run, smoke_params

FOLDERS = {"n01": "zero", "n02": "one", "n03": "two", "n04": "three"}


def real_params(tmp_path, corpus: dict, **update) -> dict:
    fabricate.image_folder(tmp_path / "imagenet", FOLDERS, {"train": 30, "val": 10})
    (tmp_path / "imagenet" / "train" / "n01" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    files = {"corpus": corpus,
             "downstream": {"path": str(tmp_path / "imagenet"), "train": "train", "val": None, "test": "val"}}
    params = smoke_params(**update)
    params["data"].update(source="files", classes=FOLDERS, **NO_GLYPH_WORLD, files=files, corpus_size=600,
                          train_per_class=20, val_per_class=8, test_per_class=10, defender_pairs=32,
                          max_bad_fraction=0.01)
    params["run"] = {"attacks": ["badnet"], "defenses": ["none", "rvpt"]}
    params["defenses"]["cleanclip"]["budget"] = 32
    return params


def check_results(project, transfer: list[str]):
    rows = json.loads((project / "results" / "summary.json").read_text())["rows"]
    assert {(r["attack"], r["defense"]) for r in rows} == {("badnet", "clean_model"), ("badnet", "none"),
                                                           ("badnet", "rvpt")}
    for row in rows:
        assert 0 <= row["clean_accuracy"] <= 1 and 0 <= row["attack_success_rate"] <= 1
        for name in transfer:
            assert 0 <= row[f"{name}_clean_accuracy"] <= 1
    # The zero-shot rows, recomputed with plain open_clip on the test split: the same to the digit.
    params = yaml.safe_load((project / "params.yaml").read_text())
    test = pq.read_table(project / "data" / "clean" / "downstream" / "test.parquet")
    images, labels = test.column("image").to_pylist(), test.column("label").to_pylist()
    names = list(params["data"]["classes"].values())
    for defense, model_dir in (("clean_model", "clean"), ("none", "badnet")):
        model = open_clip.create_model(f"local-dir:{project / 'models' / model_dir}").eval()
        expected = independent_accuracy(model, images, labels, names, params["model"]["templates"],
                                        params["data"]["image_size"])
        [row] = [r for r in rows if r["defense"] == defense]
        assert row["clean_accuracy"] == pytest.approx(expected, abs=1e-9), defense
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."
    return rows


def test_image_folder_pipeline(tmp_path, served):
    www, url = served
    fabricate.image_folder(tmp_path / "caltech" / "101_ObjectCategories", {"ay": "ay", "bee": "bee"}, {".": 10})
    with tarfile.open(www / "caltech.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "caltech" / "101_ObjectCategories", "101_ObjectCategories")
    digest = hashlib.sha256((www / "caltech.tar.gz").read_bytes()).hexdigest()
    params = real_params(tmp_path, {"path": str(tmp_path / "imagenet"), "format": "image_folder", "split": "train"})
    params["data"]["files"]["transfer"] = {"caltech": {"path": f"{url}/caltech.tar.gz", "sha256": digest,
                                                       "classes": ["ay", "bee"]}}
    project = make_project(tmp_path / "project", params)
    result = run(["dvc", "repro"], project)
    assert "skipped 1 of 121 unreadable images" in result.stderr  # the broken file, named
    assert "broken.jpg" in result.stderr
    downstream = project / "data" / "clean" / "downstream"
    # val carved out of train (8 per class), train capped at 20 per class, test = the val folder
    assert {s: pq.read_metadata(downstream / f"{s}.parquet").num_rows for s in ("train", "val", "test")} \
        == {"train": 80, "val": 32, "test": 40}
    assert pq.read_metadata(downstream / "caltech_test.parquet").num_rows == 20
    corpus = pq.read_table(project / "data" / "clean" / "corpus")
    # The corpus reads the same train/ folder: the 112 images drawn for train and val are left out of it.
    assert corpus.num_rows == 120 - 80 - 32 and set(corpus.column("label").to_pylist()) == {0, 1, 2, 3}
    assert "(112 corpus images excluded as downstream images or repeats)" in result.stdout
    assert all(any(name in c for name in FOLDERS.values()) for c in corpus.column("caption").to_pylist())
    check_results(project, ["caltech"])
    summary = (project / "results" / "summary.md").read_text()
    assert "Cross-task: ASR % (CA %) on caltech" in summary


def test_image_folder_refuses_a_wrong_sha256(tmp_path, served):
    www, url = served
    (www / "set.tar.gz").write_bytes(b"x" * 100)
    params = real_params(tmp_path, {"path": str(tmp_path / "imagenet"), "format": "image_folder", "split": "train"})
    params["data"]["files"]["transfer"] = {"caltech": {"path": f"{url}/set.tar.gz", "sha256": "0" * 64,
                                                       "classes": ["ay", "bee"]}}
    project = make_project(tmp_path / "project", params)
    result = run(["rvpt", "stage", "download"], project, check=False)
    assert result.returncode == 2 and "sha256 is" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (project / "data" / "clean").exists()


def test_parquet_and_webdataset_shards_give_the_same_corpus(tmp_path):
    """The same 700 pairs as img2dataset writes them in either format: the same tables, row for row."""
    tables = {}
    for shards in ("parquet", "webdataset"):
        write = fabricate.parquet_shards if shards == "parquet" else fabricate.webdataset_shards
        write(tmp_path / shards / "cc", list(FOLDERS.values()) + ["ay", "bee"], 700, per_shard=250)
        params = real_params(tmp_path / shards, {"path": str(tmp_path / shards / "cc"), "format": shards})
        project = make_project(tmp_path / shards / "project", params)
        run(["rvpt", "stage", "download"], project)
        clean = project / "data" / "clean"
        tables[shards] = pq.read_table(clean / "corpus"), pq.read_table(clean / "pairs.parquet")
        assert len(list((clean / "corpus").glob("part-*.parquet"))) == 2  # shard_rows 500
    (corpus, pairs), (other_corpus, other_pairs) = tables["parquet"], tables["webdataset"]
    assert corpus.num_rows == 600 and pairs.num_rows == 32  # the pairs come after the corpus's 600
    assert set(corpus.column("label").to_pylist()) == {-1}
    assert corpus.equals(other_corpus) and pairs.equals(other_pairs)


def test_shards_pipeline(tmp_path):
    fabricate.parquet_shards(tmp_path / "cc3m", list(FOLDERS.values()) + ["ay", "bee"], 700, per_shard=250)
    params = real_params(tmp_path, {"path": str(tmp_path / "cc3m"), "format": "parquet"})
    params["data"]["preload_max_gib"] = 0  # pretraining decodes batch by batch, in a DataLoader worker
    params["compute"]["workers"] = 1
    project = make_project(tmp_path / "project", params)
    # Up to the backdoored model: what follows reads the downstream splits, as test_image_folder_pipeline's do.
    run(["dvc", "repro", "pretrain@badnet"], project)
    attack = json.loads((project / "data" / "poisoned" / "badnet" / "attack.json").read_text())
    assert attack["poisoned"] == 30  # 5% of 600, target captions copied from pairs that name "three"
    poisoned = pq.read_table(project / "data" / "poisoned" / "badnet" / "corpus").to_pydict()
    assert all("three" in c for c, p in zip(poisoned["caption"], poisoned["poisoned"]) if p)
    for model in ("clean", "badnet"):
        steps = params["pretrain"]["clean" if model == "clean" else "poisoned"]["steps"]
        assert len((project / "models" / model / "loss.csv").read_text().splitlines()) == 1 + steps
        open_clip.create_model(f"local-dir:{project / 'models' / model}")
    assert "up to date" in run(["dvc", "status", "pretrain@badnet"], project).stdout
