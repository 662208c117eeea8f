"""Hostile files where rvpt expects a path: devices and pipes, archive bombs, a code-running pickle,
weights that are no file. Each is refused with exit 2 in one line before it is read, and leaves
the folder as it was."""
import io
import tarfile
import zipfile

import pytest
import yaml
from hostile import brought_folder, refused_at_once

CLASSES = ["zero", "one", "two"]


@pytest.fixture
def brought(tmp_path):
    return brought_folder(tmp_path, CLASSES)


@pytest.mark.parametrize("argv, culprit", [
    (["scan", "--model", "model", "--data", "/dev/zero", "--out", "x"], "/dev/zero: not a regular file"),
    (["defend", "--model", "/dev/zero", "--config", "cfg.json", "--data", "images", "--out", "x"],
     "/dev/zero: not a regular file"),
    (["defend", "--model", "model", "--data", "fifo.tar.gz", "--out", "x"], "fifo.tar.gz: not a regular file"),
    (["scan", "--model", "fifo.tar.gz", "--data", "images", "--out", "x"], "fifo.tar.gz: not a regular file"),
    (["defend", "--model", "model", "--data", "images", "--classnames", "/dev/zero", "--out", "x"],
     "not a regular file"),
    (["defend", "--model", "model.safetensors", "--config", "/dev/zero", "--data", "images", "--out", "x"],
     "not a regular file"),
    (["calibrate", "--summary", "/dev/zero"], "/dev/zero: not a regular file"),
    (["calibrate", "--summary", "fifo.tar.gz"], "not a regular file"),
])
def test_a_path_that_is_no_regular_file_is_refused_unread(brought, argv, culprit):
    (brought / "model.safetensors").write_bytes((brought / "model" / "open_clip_model.safetensors").read_bytes())
    argv = [*argv, "--no-track"] if argv[0] == "defend" else argv
    argv = [*argv, "--cache", str(brought / "cache")] if argv[0] in ("defend", "scan") else argv
    assert culprit in refused_at_once(brought, *argv)


def bomb(path, kind: str, megabytes: int = 40):
    """An archive of one member of zeros that compresses about a thousandfold."""
    zeros = bytes(megabytes << 20)
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("images/zero/a.png", zeros)
    else:
        with tarfile.open(path, "w:gz") as archive:
            info = tarfile.TarInfo("images/zero/a.png")
            info.size = len(zeros)
            archive.addfile(info, io.BytesIO(zeros))
    return path


def empty_members(path, count: int):
    with tarfile.open(path, "w:gz") as archive:
        for i in range(count):
            archive.addfile(tarfile.TarInfo(f"junk/{i}.png"), io.BytesIO(b""))
    return path


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_bomb_is_refused_whole_and_leaves_nothing_in_the_cache(brought, kind):
    archive = bomb(brought / f"bomb.{kind}", kind)
    line = refused_at_once(brought, "defend", "--model", "model", "--data", archive.name, "--out", "x",
                           "--cache", str(brought / "cache"), "--no-track")
    assert "compression bomb" in line and "data.archive.max_ratio" in line
    assert not list((brought / "cache").rglob("*.png"))


def test_archive_limits_come_from_params_and_a_refused_archive_leaves_no_files(brought):
    empty_members(brought / "junk.tar.gz", 300)
    params = yaml.safe_load((brought / "params.yaml").read_text())
    args = ["defend", "--model", "model", "--data", "junk.tar.gz", "--out", "x", "--cache", str(brought / "cache"),
            "--no-track"]
    # Within the limits, the archive unpacks, its content is refused, and the extraction goes again.
    assert "class folders" in refused_at_once(brought, *args)
    assert not list((brought / "cache").rglob("*.png"))
    params["data"]["archive"]["max_members"] = 100
    (brought / "params.yaml").write_text(yaml.safe_dump(params))
    assert "over 100 members (data.archive.max_members)" in refused_at_once(brought, *args)
    assert not list((brought / "cache").rglob("*.png"))


def test_profile_refuses_weights_that_are_no_file_and_names_a_missing_params_file(brought):
    root = brought / "data"
    for split in ("train", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                (root / split / name / f"{i}.png").write_bytes((brought / "images" / name / f"{i}.png").read_bytes())
    line = refused_at_once(brought, "profile", "imagefolder", "--root", "data", "--model", "ViT-B-32-quickgelu",
                           "--pretrained", "/dev/zero")
    assert "model.pretrained: /dev/zero: not a regular file" in line
    line = refused_at_once(brought, "profile", "imagefolder", "--root", "data", "--params", "missing.yaml")
    assert "missing.yaml: not found" in line


def test_the_pickle_refusal_is_one_short_line(brought):
    from hostile import malicious_checkpoint

    malicious_checkpoint(brought / "open_clip_pytorch_model.bin", brought / "ran")
    line = refused_at_once(brought, "defend", "--model", "open_clip_pytorch_model.bin", "--config", "cfg.json",
                           "--data", "images", "--out", "x", "--no-track", "--cache", str(brought / "cache"))
    assert "it would call 'exec'" in line and len(line) <= 400
    assert not (brought / "ran").exists()
