"""Untrusted inputs at the library level: images, archives, downloads and saved defense tensors."""
import hashlib
import tarfile
import zipfile

import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL
from hostile import HOSTILE_IMAGES, decompression_bomb, png, tar_with
from safetensors.torch import save_file

from pipeline.data import sources
from pipeline.config.data import ArchiveLimits
from rvpt import models
from rvpt.defenses.registry import KINDS
from rvpt.errors import BadInput
from rvpt.images import decode, decode_many


# params.yaml's default archive limits, as every command reads them
LIMITS = ArchiveLimits(**yaml.safe_load((REPO / "params.yaml").read_text())["data"]["archive"])


@pytest.mark.parametrize("name", sorted(HOSTILE_IMAGES))
def test_each_hostile_image_is_refused_with_its_name(name):
    with pytest.raises(BadInput, match=f"^{name}: not a"):
        decode(HOSTILE_IMAGES[name](), 16, name)


def test_a_bomb_under_pillows_own_limit_is_still_refused_from_its_header():
    with pytest.raises(BadInput, match="8000 x 8000 pixels exceeds the limit of 50,000,000"):
        decode(decompression_bomb(8000), 16, "bomb")


def test_unreadable_images_are_skipped_up_to_the_allowed_share_then_refused():
    blobs = [png(colour=(i, i, i)) for i in range(7)] + [make() for make in HOSTILE_IMAGES.values()]
    decoded = decode_many(blobs, 16, "table", max_bad_fraction=0.3)
    assert decoded.kept.tolist() == list(range(7)) and decoded.pixels.shape == (7, 16, 16, 3)
    assert len(decoded.skipped) == 3 and decoded.skipped[0].startswith("table row 7:")
    with pytest.raises(BadInput, match=r"3 of 10 images unreadable.*first: table row 7"):
        decode_many(blobs, 16, "table", max_bad_fraction=0.2)
    with pytest.raises(BadInput, match="3 of 10"):
        decode_many(blobs, 16, "table", max_bad_fraction=0.0)


@pytest.mark.parametrize("members, links, culprit", [
    ({"ok/a.png": b"x", "../escape.png": b"x"}, None, "'../escape.png' would land outside"),
    ({"/etc/evil.png": b"x"}, None, "'/etc/evil.png' would land outside"),
    ({"ok/a.png": b"x"}, {"ok/link.png": "/etc/passwd"}, "'ok/link.png' is a link"),
    ({"ok/a.png": b"x"}, {"ok/inside.png": "a.png"}, "'ok/inside.png' is a link"),
    ({"ok/a.png": b"x"}, {"ok/zero.png": tarfile.CHRTYPE}, "'ok/zero.png' is a link or a special file"),
    ({"ok/a.png": b"x"}, {"ok/disk.png": tarfile.BLKTYPE}, "'ok/disk.png' is a link or a special file"),
    ({"ok/a.png": b"x"}, {"ok/pipe.png": tarfile.FIFOTYPE}, "'ok/pipe.png' is a link or a special file"),
    ({"ok/a.png": b"x"}, {"ok/hard.png": tarfile.LNKTYPE}, "'ok/hard.png' is a link or a special file"),
])
def test_unsafe_tar_archives_are_refused_whole(tmp_path, members, links, culprit):
    special = {name: kind for name, kind in (links or {}).items() if isinstance(kind, bytes)}
    links = {name: target for name, target in (links or {}).items() if not isinstance(target, bytes)}
    archive = tar_with(tmp_path / "data.tar.gz", members, links, special)
    with pytest.raises(BadInput, match=culprit):
        sources.extract(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data.tar.gz"]


def test_unsafe_zip_is_refused_and_a_safe_archive_extracts(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr("../../escape.png", b"x")
    with pytest.raises(BadInput, match="would land outside"):
        sources.extract(tmp_path / "bad.zip", tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
    good = tar_with(tmp_path / "good.tar.gz", {"cat/a.png": png(), "dog/b.png": png()})
    assert sorted(p.name for p in sources.extract(good, tmp_path / "out", LIMITS).rglob("*.png")) == ["a.png", "b.png"]


def test_sha256_mismatch_is_refused(tmp_path):
    good = tar_with(tmp_path / "good.tar.gz", {"cat/a.png": png()})
    with pytest.raises(BadInput, match="sha256 is"):
        sources.materialise(str(good), tmp_path / "cache", "0" * 64, 5, LIMITS)


def test_urls_need_a_sha256_and_are_verified_before_use(served, tmp_path):
    www, url = served
    (www / "weights.bin").write_bytes(b"some weights")
    digest = hashlib.sha256(b"some weights").hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(BadInput, match="needs its sha256"):
        sources.materialise(f"{url}/weights.bin", cache, None, 5, LIMITS)
    with pytest.raises(BadInput, match="sha256 is"):
        sources.materialise(f"{url}/weights.bin", cache, "f" * 64, 5, LIMITS)
    assert not any(p.is_file() for p in cache.rglob("*"))
    path = sources.materialise(f"{url}/weights.bin", cache, digest, 5, LIMITS)
    assert path.read_bytes() == b"some weights"
    with pytest.raises(BadInput, match="download failed"):
        sources.materialise(f"{url}/missing.bin", cache, digest, 5, LIMITS)


@pytest.mark.parametrize("kind, tensors, culprit", [
    ("prompt", {"prompts": torch.zeros(2, 4, 7)}, "width 7"),
    ("prompt", {"other": torch.zeros(2, 4, 32)}, "not an rvpt prompts file"),
    ("linear_probe", {"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}, "not a linear head"),
    ("coop", {"context": torch.zeros(4, 32, dtype=torch.float64)}, "no float32"),
])
def test_tampered_defense_tensors_are_refused(tmp_path, kind, tensors, culprit):
    model = models.build(TINY_MODEL, seed=0)
    file = KINDS[kind].FILE
    save_file(tensors, str(tmp_path / file), metadata={"first_block": "1", "classes": "a\nb\nc"})
    with pytest.raises(ValueError, match=culprit):
        KINDS[kind].load(model, tmp_path, models.tokenizer(TINY_MODEL), ["a {}"])
    (tmp_path / file).write_bytes(b"\x80\x04 pickle, not safetensors")
    with pytest.raises(BadInput, match="not a valid safetensors"):
        KINDS[kind].load(model, tmp_path, models.tokenizer(TINY_MODEL), ["a {}"])
