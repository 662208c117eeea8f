"""`rvpt defend` on folders and models that a careless or hostile user hands it."""
import json
import os

import numpy as np
import pytest
import torch
import yaml
from conftest import brought_files, call, one_error_line, smoke_params, tree
from PIL import Image
from safetensors.torch import load_file, save_file

from rvpt import models

CLASSES = ["zero", "one", "two"]


@pytest.fixture
def brought(tmp_path):
    """A tiny open_clip model and a clean glyph folder, root/<class>/*.png."""
    brought_files(tmp_path, CLASSES)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke_params(
        data={"max_bad_fraction": 0.2}, defenses={"rvpt": {"epochs": 1, "batch_size": 8, "tokens": 4}})))
    return tmp_path


def defend(root, *extra, out="out"):
    return call(root, "defend", "--model", "model", "--data", "images", "--out", str(out),
                "--cache", str(root / "cache"), "--no-track", *extra)  # tracking: test_defend.py


def test_hostile_files_are_skipped_unread_and_a_users_folder_survives(brought):
    images = brought / "images"
    with open(images / "two" / "huge.jpg", "wb") as handle:
        handle.truncate(1 << 30)  # read whole, this would cost 1 GiB of memory
    (brought / "outside").mkdir()
    Image.new("RGB", (16, 16)).save(brought / "outside" / "secret.png")
    os.symlink(brought / "outside" / "secret.png", images / "one" / "linked.png")
    wide = Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))
    wide.save(images / "zero" / "wide.png")
    (brought / ".out.important").mkdir()
    (brought / ".out.important" / "notes").write_text("mine")

    code, out, err = defend(brought)
    assert code == 0, err
    assert "huge.jpg: not a readable image" in err and "more than any image" in err
    assert "left out 1 linked files outside the data root" in err
    assert "scaled 1 16-bit or float images" in err
    report = json.loads((brought / "out" / "defend.json").read_text())
    assert report["skipped_images"] == 1 and report["train_images"] + report["heldout_images"] == 19
    assert (brought / ".out.important" / "notes").read_text() == "mine"
    assert not [p for p in brought.iterdir() if p.name.startswith(".out.") and p.name != ".out.important"]


def test_a_class_folder_linking_out_of_the_root_is_refused(brought):
    os.symlink(brought / "model", brought / "images" / "three")
    before = tree(brought)
    code, _, err = defend(brought)
    assert code == 2 and "a link out of the data root" in one_error_line(err)
    assert tree(brought) == before


def test_duplicate_class_names_are_refused(brought):
    (brought / "names.txt").write_text("cat\ndog\nCat\n")
    code, _, err = defend(brought, "--classnames", "names.txt")
    assert code == 2 and "repeats" in one_error_line(err)
    os.rename(brought / "images" / "one", brought / "images" / "t_wo")
    os.rename(brought / "images" / "two", brought / "images" / "t wo")
    code, _, err = defend(brought)
    assert code == 2 and "repeats" in one_error_line(err)
    assert not (brought / "out").exists()


def test_non_finite_weights_are_refused(brought):
    weights = brought / "model" / models.WEIGHTS_NAME
    state = load_file(weights)
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    save_file(state, weights)
    code, _, err = defend(brought)
    assert code == 2 and "visual.proj holds NaN or infinite values" in one_error_line(err)
    assert not (brought / "out").exists()


def test_an_output_that_cannot_be_written_is_found_before_training(brought):
    (brought / "blocker").write_text("a file, not a folder")
    code, out, err = defend(brought, out=brought / "blocker" / "out")
    assert code == 2 and "blocker is not a folder" in one_error_line(err)
    assert "CA before" not in out
    for out_path in (".", "..", "/"):
        code, _, err = defend(brought, out=out_path)
        assert code == 2, out_path
        one_error_line(err)


def test_an_oversized_names_file_is_not_read(brought):
    (brought / "names.txt").write_bytes(b"x\n" * (1 << 20))
    code, _, err = defend(brought, "--classnames", "names.txt")
    assert code == 2 and "names.txt" in one_error_line(err)
