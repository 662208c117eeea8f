"""Real data for the `download` stage: ImageFolder trees and img2dataset's Parquet or WebDataset
shards, read as a stream and written out in the interchange schema.

Every image is decoded once here, so an unreadable one is counted and skipped (up to
data.max_bad_fraction) before any later stage sees it. Encoded bytes are kept as they came.
"""
from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import sources
from pipeline.store import artifacts
from rvpt.errors import BadInput
from rvpt.images import decode_image, read_file

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "image")
CAPTION_KEYS = ("txt", "caption", "text")
MAX_MEMBER_BYTES = 64 << 20  # a shard member larger than this is no web image; skipped unread


class TableWriter:
    """Rows in the interchange schema, written as they come: one Parquet file, or numbered
    shards of `shard_rows` rows when `folder` is a folder of part-*.parquet."""

    def __init__(self, path: Path, shard_rows: int | None = None, chunk: int = artifacts.ROW_GROUP):
        self.path, self.shard_rows, self.chunk = path, shard_rows, chunk
        self.rows: list[tuple] = []
        self.writer, self.in_file, self.files, self.count = None, 0, 0, 0
        self.hashes: set[bytes] = set()  # of every image written: what a corpus must not contain
        if shard_rows:
            path.mkdir(parents=True, exist_ok=True)

    def add(self, image: bytes, caption: str, label: int, digest: bytes | None = None) -> None:
        """`digest`: the image's content_hash, when the caller has it already."""
        self.hashes.add(digest or content_hash(image))
        self.rows.append((image, caption, label))
        self.count += 1
        if len(self.rows) >= self.chunk or (self.shard_rows and self.in_file + len(self.rows) >= self.shard_rows):
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            target = self.path / f"part-{self.files:05d}.parquet" if self.shard_rows else self.path
            self.writer = pq.ParquetWriter(str(target), artifacts.SCHEMA, compression="zstd")
        images, captions, labels = zip(*self.rows)
        self.writer.write_table(pa.table([pa.array(images, pa.binary()), pa.array(captions, pa.string()),
                                          pa.array(labels, pa.int32()), pa.array([False] * len(labels))],
                                         schema=artifacts.SCHEMA))
        self.in_file += len(self.rows)
        self.rows = []
        if self.shard_rows and self.in_file >= self.shard_rows:
            self._close_file()

    def _close_file(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.in_file, self.files = None, 0, self.files + 1

    def close(self) -> int:
        self._flush()
        self._close_file()
        if self.count == 0:
            raise BadInput(f"{self.path}: no readable image to write")
        return self.count


def content_hash(image: bytes) -> bytes:
    return hashlib.sha256(image).digest()


class Checked:
    """Decodes each image once; counts and names the unreadable ones, refusing past the allowed share."""

    def __init__(self, data, where: str):
        self.data, self.where, self.seen, self.skipped, self.scaled = data, where, 0, [], 0

    def readable(self, blob: bytes | Path | None, name: str) -> bytes | None:
        """The image's bytes when it decodes, else None (counted and named)."""
        self.seen += 1
        try:
            if blob is None:
                raise BadInput(f"{name}: no image bytes")
            if isinstance(blob, Path):
                blob = read_file(blob, name, self.data.max_image_pixels)
            self.scaled += decode_image(blob, self.data.image_size, name, self.data.max_image_pixels)[1]
            return blob
        except BadInput as error:
            self.skipped.append(str(error))
            return None

    def finish(self) -> None:
        if self.skipped and len(self.skipped) > self.data.max_bad_fraction * self.seen:
            raise BadInput(f"{self.where}: {len(self.skipped)} of {self.seen} images unreadable, over the allowed "
                           f"share {self.data.max_bad_fraction:g} (data.max_bad_fraction); first: {self.skipped[0]}")
        if self.skipped:
            artifacts.warn(f"{self.where}: skipped {len(self.skipped)} of {self.seen} unreadable images "
                           f"(first: {self.skipped[0]})")
        if self.scaled:
            artifacts.warn(f"{self.where}: scaled {self.scaled} 16-bit or float images to 8 bits")


def local(spec, cache: Path, timeout: float, limits) -> Path:
    """The spec's path as a local folder: URLs downloaded and archives extracted (within `limits`,
    data.archive), both sha256-checked."""
    return sources.materialise(spec.path, cache, spec.sha256, timeout, limits)


def class_files(root: Path, split: str | None, folders: list[str]) -> list[list[Path]]:
    """Each class folder's image files under root/<split>/, in the order of `folders`."""
    base = root / split if split else root
    missing = [f for f in folders if not (base / f).is_dir()]
    if missing:
        raise BadInput(f"{base}: no class folder {missing[0]!r} ({len(missing)} of {len(folders)} missing)")
    return [sources.image_files(base / f, root) for f in folders]


def shuffled(files: list[list[Path]], seed: int) -> list[list[Path]]:
    rng = np.random.default_rng(seed)
    return [[paths[i] for i in rng.permutation(len(paths))] for paths in files]


def write_labelled(path: Path, files: list[list[Path]], per_class: int | None, check: Checked,
                   captions=None) -> TableWriter:
    """Up to `per_class` readable images of each class; captions from `captions(label)` or empty."""
    writer = TableWriter(path)
    for label, paths in enumerate(files):
        taken = 0
        for file in paths:
            if per_class is not None and taken >= per_class:
                break
            blob = check.readable(file, str(file))
            if blob is not None:
                writer.add(blob, captions(label) if captions else "", label)
                taken += 1
    return writer


def shard_files(root: Path, suffix: str) -> list[Path]:
    files = sorted(root.rglob(f"*{suffix}")) if root.is_dir() else [root]
    if not files:
        raise BadInput(f"{root}: no {suffix} shards")
    return files


def parquet_pairs(root: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, image bytes, caption, label -1) of img2dataset Parquet shards, one record batch at a time."""
    for file in shard_files(root, ".parquet"):
        try:
            shard = pq.ParquetFile(str(file))
        except (pa.ArrowInvalid, OSError) as error:
            raise BadInput(f"{file}: not a readable Parquet shard ({error})") from None
        names = shard.schema_arrow.names
        image = next((k for k in IMAGE_KEYS if k in names), None)
        caption = next((k for k in CAPTION_KEYS if k in names), None)
        if image is None or caption is None:
            raise BadInput(f"{file}: needs an image column ({'/'.join(IMAGE_KEYS)}) and a caption column "
                           f"({'/'.join(CAPTION_KEYS)}); has {names[:8]}")
        row = 0
        for batch in shard.iter_batches(batch_size=256, columns=[image, caption]):
            for blob, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                yield f"{file.name} row {row}", blob, text, -1
                row += 1


def webdataset_pairs(root: Path) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, image bytes, caption, label -1) of WebDataset tar shards, read as a stream (nothing is extracted)."""
    for file in shard_files(root, ".tar"):
        try:
            with tarfile.open(file, mode="r|*") as shard:
                key, sample = None, {}
                for member in shard:
                    if not member.isfile() or member.size > MAX_MEMBER_BYTES:
                        continue
                    name = PurePosixPath(member.name)
                    stem, _, extension = name.name.partition(".")
                    member_key = str(name.parent / stem)
                    if member_key != key and key is not None:
                        yield from _sample(file, key, sample)
                        sample = {}
                    key = member_key
                    sample[extension.lower()] = shard.extractfile(member).read()
                if key is not None:
                    yield from _sample(file, key, sample)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise BadInput(f"{file}: not a readable tar shard ({error})") from None


def _sample(file: Path, key: str, sample: dict):
    blob = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    text = next((sample[k] for k in CAPTION_KEYS if k in sample), None)
    yield f"{file.name}:{key}", blob, text.decode("utf-8", "replace") if text is not None else None, -1


def folder_pairs(files: list[list[Path]], templates: list[str], names: list[str], seed: int) -> Iterator:
    """An ImageFolder as a captioned corpus: all images shuffled, each captioned by a random template."""
    rng = np.random.default_rng(seed)
    rows = [(path, label) for label, paths in enumerate(files) for path in paths]
    for i in rng.permutation(len(rows)):
        path, label = rows[i]
        template = templates[rng.integers(len(templates))]
        yield str(path), path, template.format(names[label]), label


def write_pairs(pairs: Iterator, writers: list[tuple[TableWriter, int]], check: Checked,
                held_out: set[bytes] = frozenset()) -> int:
    """Fills each writer with its count of readable, captioned pairs from the stream, in turn.

    An image whose content hash is in `held_out` (a downstream image) or already written (a
    repeat) is left out, so no pretraining pair is also an evaluation image; returns how many were.
    """
    excluded = 0
    for writer, count in writers:
        while writer.count < count:
            try:
                name, blob, caption, label = next(pairs)
            except StopIteration:
                return excluded
            if caption is None:
                check.seen += 1
                check.skipped.append(f"{name}: no caption")
            elif (blob := check.readable(blob, name)) is not None:
                digest = content_hash(blob)
                if digest in held_out or any(digest in other.hashes for other, _ in writers):
                    excluded += 1
                    continue
                writer.add(blob, caption, label, digest)
    return excluded
