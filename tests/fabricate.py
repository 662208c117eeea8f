"""Tiny stand-ins for real data and weights, in the layouts the real sources use: an ImageFolder tree
(CIFAR/ImageNet exports, Caltech101), img2dataset's Parquet and WebDataset shards, the paper's four
datasets, and a Hugging Face cache holding random weights where the `openai` tag's file would be."""
from __future__ import annotations

import io
import json
import re
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


def webdataset_shards(root: Path, classes: list[str], count: int, per_shard: int, seed: int = 0,
                      named: dict[str, str] | None = None) -> Path:
    """img2dataset --output_format webdataset: <key>.jpg, <key>.txt, <key>.json per sample in each tar.
    `named` renames glyph classes in the captions (a web corpus names things as the task does)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = list(samples(classes, count, seed, labelled=False))
    for glyph, name in (named or {}).items():
        rows = [(blob, re.sub(rf"\b{glyph}\b", name, caption), label) for blob, caption, label in rows]
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


SYNSETS = "n07753592 banana\nn07742313 Granny Smith, apple\nn03000134 chainlink fence\n"
OPENAI_REPO = "models--timm--vit_base_patch32_clip_224.openai"


def paper_data(root: Path, train: int = 12, val: int = 3, pairs: int = 40) -> list[str]:
    """The paper's datasets in their real layouts, tiny: ImageNet (train/ and val/ by wnid, and the
    synset mapping), CC3M as img2dataset WebDataset shards, Caltech101's class folders, and Oxford
    Pets by breed. Returns `rvpt profile paper`'s arguments for them."""
    wnids = {"n07753592": "zero", "n07742313": "one", "n03000134": "two"}  # glyph classes behind them
    image_folder(root / "imagenet", wnids, {"train": train, "val": val})
    (root / "LOC_synset_mapping.txt").write_text(SYNSETS)
    webdataset_shards(root / "cc3m", list(wnids.values()), pairs, per_shard=20,
                      named={"zero": "banana", "one": "Granny Smith", "two": "chainlink fence"})
    image_folder(root / "caltech101", {"accordion": "ay", "airplanes": "bee"}, {".": 3})
    image_folder(root / "pets", {"Abyssinian": "ay", "great_pyrenees": "bee"}, {".": 3})
    return ["--imagenet", str(root / "imagenet"), "--imagenet-classes", str(root / "LOC_synset_mapping.txt"),
            "--cc3m", str(root / "cc3m"), "--caltech101", str(root / "caltech101"), "--oxford-pets", str(root / "pets")]


def openai_cache(root: Path) -> Path:
    """A Hugging Face cache (as huggingface_hub lays it out) holding a random ViT-B-32-quickgelu, as
    safetensors, where open_clip looks for the `openai` tag's weights. Use it as HF_HUB_CACHE."""
    import torch  # noqa: F401 (models needs it; imported here so that fabricating data does not)
    from safetensors.torch import save_file

    from rvpt import models, pretrained

    assert pretrained.hub_repo("ViT-B-32-quickgelu", "openai") == "timm/vit_base_patch32_clip_224.openai"
    snapshot = root / OPENAI_REPO / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (root / OPENAI_REPO / "refs").mkdir()
    (root / OPENAI_REPO / "refs" / "main").write_text("0123abcd")
    model = models.build(models.named_config("ViT-B-32-quickgelu"), seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "open_clip_model.safetensors")
    return root
