"""Tiny stand-ins for real data, in the layouts the real sources use: an ImageFolder tree
(CIFAR/ImageNet exports, Caltech101), and img2dataset's Parquet and WebDataset shards."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rvpt.world import GlyphWorld


def jpeg(image, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    image.resize(size).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def samples(classes: list[str], count: int, seed: int, labelled: bool = True):
    """(jpeg bytes, caption, label): glyph images at 20 x 24 px (not square, as photos are not)."""
    world = GlyphWorld(classes, image_size=24)
    rng = np.random.default_rng(seed)
    for i in range(count):
        sample = world.sample(rng, label=i % len(classes) if labelled else None)
        yield jpeg(sample.image, (20, 24)), sample.caption, sample.label


def image_folder(root: Path, folders: dict[str, str], splits: dict[str, int], seed: int = 0) -> Path:
    """root/<split>/<folder>/<i>.jpg with `splits[split]` images per class; folders maps folder -> glyph class."""
    for offset, (split, per_class) in enumerate(splits.items()):
        names = list(folders.values())
        for i, (blob, _, label) in enumerate(samples(names, per_class * len(names), seed + offset)):
            path = root / split / list(folders)[label] / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
    return root


def parquet_shards(root: Path, classes: list[str], count: int, per_shard: int, seed: int = 0) -> Path:
    """img2dataset --output_format parquet: key, caption, url, jpg, status, ... per row."""
    root.mkdir(parents=True, exist_ok=True)
    rows = list(samples(classes, count, seed, labelled=False))
    for shard, start in enumerate(range(0, count, per_shard)):
        part = rows[start:start + per_shard]
        keys = [f"{shard:05d}{i:04d}" for i in range(len(part))]
        pq.write_table(pa.table({
            "key": keys, "caption": [c for _, c, _ in part], "url": [f"http://example/{k}.jpg" for k in keys],
            "jpg": pa.array([b for b, _, _ in part], pa.binary()), "status": ["success"] * len(part),
            "width": [20] * len(part), "height": [24] * len(part)}), root / f"{shard:05d}.parquet")
    return root


def webdataset_shards(root: Path, classes: list[str], count: int, per_shard: int, seed: int = 0) -> Path:
    """img2dataset --output_format webdataset: <key>.jpg, <key>.txt, <key>.json per sample in each tar."""
    root.mkdir(parents=True, exist_ok=True)
    rows = list(samples(classes, count, seed, labelled=False))
    for shard, start in enumerate(range(0, count, per_shard)):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i, (blob, caption, _) in enumerate(rows[start:start + per_shard]):
                key = f"{shard:05d}{i:04d}"
                for suffix, data in (("jpg", blob), ("txt", caption.encode()),
                                     ("json", json.dumps({"key": key, "status": "success"}).encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root
