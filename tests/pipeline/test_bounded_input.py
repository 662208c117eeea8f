"""Careless or hostile input that once passed validation: each is now refused with exit code 2 and
one short line naming the culprit, before anything is written or allocated."""
import io
import os
import threading

import numpy as np
import pytest
import yaml
from conftest import NO_GLYPH_WORLD, TINY_MODEL, call, one_error_line, smoke_params, tree
from PIL import Image

from rvpt import images
from rvpt.errors import BadInput

FILES = {"source": "files", **NO_GLYPH_WORLD,
         "files": {"corpus": {"path": "corpus", "format": "image_folder"}, "downstream": {"path": "images"}}}


def refused(root, params: dict, *argv: str) -> str:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    before = tree(root)
    code, _, err = call(root, *argv)
    assert code == 2, err
    assert tree(root) == before
    return one_error_line(err)


@pytest.mark.parametrize("update, culprit", [
    ({"data": {"classes": ["zero", "o/ne", "two", "three"]}}, "has no glyph"),
    ({"data": {"classes": ["zero", "", "two", "three"]}}, "printable text"),
    ({"data": {"classes": ["zero", "zero", "two", "three"]}}, "repeats"),
    ({"data": {"classes": ["zero", "Zero ", "two", "three"]}}, "repeats"),
    ({"data": {"classes": ["zero", "one", "two", "three"], "transfer_classes": ["ay", "one"]}}, "repeats"),
    ({"data": {**FILES, "classes": ["cat", "a/b", "dog"]}}, "one folder name"),
    ({"data": {**FILES, "classes": ["cat", "..", "dog"]}}, "one folder name"),
    ({"data": {**FILES, "classes": {"cat": "cat", "../../etc": "dog"}}}, "one folder name"),
    ({"data": {**FILES, "files": {**FILES["files"], "downstream": {"path": "images", "test": "../../x"}}}},
     "inside the data root"),
    ({"model": {"templates": ["a {} {x}"]}}, "exactly one '{}'"),
    ({"model": {"templates": ["a {} {"]}}, "not a valid template"),
    ({"model": {"templates": ["a {0!r}"]}}, "exactly one '{}'"),
    ({"defend": {"templates": ["{} and {}"]}}, "exactly one '{}'"),
    ({"defenses": {"coop": {"context": 16}}, "run": {"defenses": ["coop"]}}, "defenses.coop.context"),
    ({"defenses": {"rvpt": {"alpha": float("inf")}}}, "defenses.rvpt.alpha"),
    ({"defenses": {"rvpt": {"tokens": 10 ** 6}}}, "defenses.rvpt.tokens"),
    ({"defenses": {"rvpt": {"lr": float("nan")}}}, "defenses.rvpt.lr"),
    ({"attacks": {"wanet": {"options": {"grid": 1_000_000}}}}, "grid must be 2 to 16"),
    ({"attacks": {"sig": {"options": {"frequency": float("nan")}}}}, "attacks.sig"),
    ({"attacks": {"clean": {"kind": "badnet", "target": "three", "rate": 0.1}}}, "reserved"),
    ({"defenses": {"clean_model": {"kind": "none"}}}, "reserved"),  # the clean model's row in the summary
    ({"model": {"config": {**TINY_MODEL, "vision_cfg": {**TINY_MODEL["vision_cfg"], "layers": 10 ** 7}}}},
     "over the limit"),
    ({"pretrain": {"clean": {"steps": 10 ** 20}}}, "pretrain.clean.steps"),
])
def test_params_out_of_bounds_are_refused(tmp_path, update, culprit):
    assert culprit in refused(tmp_path, smoke_params(**update), "stage", "check")


@pytest.mark.parametrize("setting", ["tokens=0", "lr=1e308", "lr=.inf", "alpha=.nan", f"epochs={10 ** 20}",
                                     "first_block=99"])
def test_tune_settings_out_of_bounds_are_refused(tmp_path, setting):
    line = refused(tmp_path, smoke_params(), "stage", "tune", "--defense", "rvpt", "-S", f"defenses.rvpt.{setting}")
    assert f"-S defenses.rvpt.{setting.split('=')[0]}" in line


def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_params_files_that_are_no_params_files(tmp_path):
    base = yaml.safe_dump(smoke_params())
    (tmp_path / "bomb.yaml").write_text(alias_bomb() + base.replace("templates:", "templates: *a8\n  x:", 1))
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n" + base)
    (tmp_path / "huge.yaml").write_text(base + "# " + "x" * (2 << 20) + "\n")
    (tmp_path / "folder.yaml").mkdir()
    os.mkfifo(tmp_path / "fifo.yaml")
    for name, culprit in (("bomb.yaml", "aliases are expanded"), ("deep.yaml", "nested"), ("huge.yaml", "bytes"),
                          ("folder.yaml", "not a regular file"), ("fifo.yaml", "not a regular file"),
                          ("/dev/zero", "not a regular file")):
        before = tree(tmp_path)
        code, _, err = call(tmp_path, "stage", "sample", "--params", name)
        assert code == 2 and culprit in one_error_line(err), (name, err)
        assert tree(tmp_path) == before


@pytest.mark.parametrize("uri, culprit", [
    ("ftp://example.invalid/store", "scheme 'ftp'"),
    ("plainword", "MLFLOW_ALLOW_FILE_STORE"),
    ("sqlite:////proc/rvpt/mlflow.db", "/proc/rvpt is not a folder"),
    ("sqlite:////proc/mlflow.db", "cannot write in /proc"),
    ("sqlite:///params.yaml", "does not open as a SQLite database"),
    ("postgresql+pg8000://u@127.0.0.1:9/db", "postgresql"),
])
def test_every_tracking_uri_is_checked_before_work(tmp_path, monkeypatch, uri, culprit):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert culprit in refused(tmp_path, smoke_params(), "stage", "sample")


def test_a_file_store_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///proc/rvpt-store")
    assert "cannot write in /proc" in refused(tmp_path, smoke_params(), "stage", "sample")


def png(array: np.ndarray, mode: str) -> bytes:
    """The array as a PNG, or as a TIFF for floats (PNG has none); Pillow picks the mode from the dtype."""
    image = Image.fromarray(array)
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "F" else "PNG")
    return buffer.getvalue()


def test_wide_images_are_scaled_not_clipped():
    grey16 = png(np.full((8, 8), 128 * 257, dtype=np.uint16), "I;16")
    array, wide = images.decode_image(grey16, 8)
    assert wide and (array == 128).all()
    grey_float = png(np.full((8, 8), 0.5, dtype=np.float32), "F")
    array, wide = images.decode_image(grey_float, 8)
    assert wide and (array == 128).all()
    with pytest.raises(BadInput, match=r"outside \[0, 1\]"):
        images.decode_image(png(np.full((8, 8), 7.0, dtype=np.float32), "F"), 8)
    decoded = images.decode_many([grey16, png(np.zeros((8, 8, 3), np.uint8), "RGB")], 8, "t")
    assert decoded.scaled == 1


def test_exif_orientation_is_applied():
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = 255  # stored 16 wide and 8 high, its left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # to be shown turned 90 degrees clockwise: 8 wide, 16 high, its top half white
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    shown = images.decode(buffer.getvalue(), 8).mean(axis=2)  # the centre 8 x 8 of what is shown
    assert shown[0, 0] > 200 and shown[0, -1] > 200 and shown[-1, 0] < 50 and shown[-1, -1] < 50


def test_files_that_are_no_images_are_not_read(tmp_path):
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(1 << 30)  # 1 GiB of nothing, on no disk
    with pytest.raises(BadInput, match="more than any image"):
        images.decode(sparse, 16)
    os.mkfifo(tmp_path / "pipe.png")
    errors = []

    def attempt():
        try:
            images.decode(tmp_path / "pipe.png", 16)
        except BadInput as error:
            errors.append(str(error))

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive() and "not a regular file" in errors[0]
