"""The paper profile: `rvpt profile paper` with the user's data paths writes a valid params.yaml,
`dvc repro --dry` lists the paper's pipeline, and its download stage reads data in those layouts."""
import json

import yaml

import fabricate
from conftest import make_project, run, smoke_params

ATTACKS = ["badnet", "blended", "issba", "sig", "wanet", "trojvqa", "badclip"]
DEFENSES = ["none", "rvpt", "vpt", "linear_probe", "cleanclip"]


def test_paper_profile_lists_the_papers_pipeline(tmp_path):
    project = make_project(tmp_path / "project", smoke_params())
    result = run(["rvpt", "profile", "paper", *fabricate.paper_data(tmp_path)], project)
    assert "wrote params.yaml for profile paper (3 classes)" in result.stdout
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["model"] == {"name": "ViT-B-32-quickgelu", "pretrained": "openai", "config": None,
                               "templates": ["a photo of a {}."]}
    assert params["data"]["classes"]["n07753592"] == "banana" and params["data"]["image_size"] == 224
    assert params["data"]["files"]["transfer"]["oxford_pets"]["classes"]["great_pyrenees"] == "great pyrenees"
    assert (params["defenses"]["rvpt"]["tokens"], params["defenses"]["rvpt"]["first_block"]) == (50, 3)
    assert params["defenses"]["rvpt"]["augment"] == params["defenses"]["vpt"]["augment"] == [0.08, 1.0]
    assert params["attacks"]["badnet"]["rate"] * params["data"]["corpus_size"] == 1500

    # --force: on a fresh project DVC 3.67's plain --dry looks up its run cache, which hashes the
    # not-yet-made files inside data/clean and fails; --force skips that lookup and runs nothing.
    dry = run(["dvc", "repro", "--dry", "--force"], project).stdout
    commands = [line[2:] for line in dry.splitlines() if line.startswith("> ")]
    expected = ["rvpt stage check", "rvpt stage download", "rvpt stage pretrain --clean", "rvpt stage sample",
                "rvpt stage scan", "rvpt stage evaluate", "rvpt stage report"]
    expected += [f"rvpt stage {stage} --attack {a}" for a in ATTACKS for stage in ("poison", "pretrain")]
    expected += [f"rvpt stage tune --defense {d}" for d in DEFENSES]
    assert sorted(commands) == sorted(expected)

    run(["rvpt", "stage", "download"], project)  # the layouts the profile names are the ones it reads
    # 12 train images per class: val_per_class (10) carved out for validation, 2 left for the shots
    written = json.loads((project / "data" / "clean" / "classes.json").read_text())
    rows = written["rows"]
    # 40 shards' pairs: glyphs this small repeat, and a repeat or a downstream image is left out of the corpus
    assert rows.pop("corpus") + written["corpus_excluded"] == 40 and written["corpus_excluded"] <= 2
    assert rows == {"train": 6, "val": 30, "test": 9, "caltech101": 6, "oxford_pets": 6, "pairs": 0}


def test_paper_profile_refuses_a_bad_class_file(tmp_path):
    project = make_project(tmp_path / "project", smoke_params())
    arguments = fabricate.paper_data(tmp_path)
    (tmp_path / "LOC_synset_mapping.txt").write_text("n07753592\n")
    before = (project / "params.yaml").read_bytes()
    result = run(["rvpt", "profile", "paper", *arguments], project, check=False)
    assert result.returncode == 2 and "expected lines 'wnid name" in result.stderr
    assert (project / "params.yaml").read_bytes() == before


def test_repeated_imagenet_names_are_made_unique(tmp_path):
    from pipeline.config.profiles import synsets

    (tmp_path / "map.txt").write_text("n02012849 crane\nn03126707 crane\nn03710637 maillot\n"
                                      "n03710721 maillot, tank suit\nn01440764 tench, Tinca tinca\n")
    assert list(synsets(tmp_path / "map.txt").values()) == [
        "crane", "crane (n03126707)", "maillot", "tank suit", "tench"]
