"""Hostile inputs the trust tests feed to rvpt: code-running pickles, broken images, unsafe archives."""
import io
import os
import struct
import tarfile
import threading
import time
import zlib
from pathlib import Path

import torch
import yaml
from conftest import brought_files, call, one_error_line, smoke_params, tree
from PIL import Image


class RunsCode:
    """Unpickling this calls exec, which writes `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def malicious_checkpoint(path: Path, marker: Path, state: dict | None = None) -> Path:
    """A torch.save file whose unpickling would run code, optionally wrapped around real weights."""
    torch.save({"state_dict": state or {}, "hook": RunsCode(marker)}, path)
    return path


def png(size=(16, 16), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_image() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()[:300]


def not_an_image() -> bytes:
    return b"<html>this is not an image</html>"


def decompression_bomb(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (10 billion): refused before decoding."""
    data = bytearray(png((1, 1)))
    ihdr = 8 + 4  # signature, then the IHDR chunk's length field
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 4 + 13])) & 0xFFFFFFFF
    data[ihdr + 4 + 13:ihdr + 4 + 17] = struct.pack(">I", crc)
    return bytes(data)


HOSTILE_IMAGES = {"truncated.jpg": truncated_image, "html.png": not_an_image, "bomb.png": decompression_bomb}


def tar_with(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None,
             special: dict[str, bytes] | None = None) -> Path:
    """A tar.gz with the given files (names used verbatim, `..` included), symbolic links, and
    special members by tarfile type (CHRTYPE and BLKTYPE devices, FIFOTYPE, LNKTYPE hard links)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
        for name, kind in (special or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.devmajor, info.devminor = 1, 5  # /dev/zero's numbers, for the device types
            info.linkname = "ok/a.png" if kind == tarfile.LNKTYPE else ""
            archive.addfile(info)
    return path


def without_dvc_scratch(project) -> dict:
    """The project's tree but DVC's own scratch folder (.dvc/tmp: its locks and logs)."""
    return {path: digest for path, digest in tree(project).items() if not path.startswith(".dvc/tmp")}


def refused_at_once(root, *argv: str) -> str:
    """Runs `rvpt ARGV` in this process under a 30 s guard; it must exit 2 in one line within a
    second or two, the whole project unchanged (but DVC's lock file, which a stage takes)."""
    before, outcome = without_dvc_scratch(root), []
    worker = threading.Thread(target=lambda: outcome.append((time.monotonic(), call(root, *argv))), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=30)
    assert outcome, f"rvpt {' '.join(argv)} still running after 30 s"
    ended, (code, _, err) = outcome[0]
    assert code == 2, err
    assert ended - started < 2, ended - started
    assert without_dvc_scratch(root) == before
    return one_error_line(err)


def brought_folder(root, classes: list[str]):
    """What a user brings (a model and an image folder), a params.yaml, the model's open_clip config
    as cfg.json, and a named pipe where an archive could be."""
    root.mkdir(parents=True, exist_ok=True)
    brought_files(root, classes)
    (root / "params.yaml").write_text(yaml.safe_dump(smoke_params()))
    (root / "cfg.json").write_text((root / "model" / "open_clip_config.json").read_text())
    os.mkfifo(root / "fifo.tar.gz")
    return root
