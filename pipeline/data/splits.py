"""A split read batch by batch: its images stay encoded on disk until a batch needs them, so
scoring a split takes the memory of a batch, never of the split. A split small enough once
decoded (under data.preload_max_gib, as fp32) keeps its decoded rows after the first whole pass:
`evaluate` and `scan` read the same splits once per model, and decoding them again each time
was a fifth of their time on the default matrix.

Labels and nuisance factors are small and held whole. Images are read one Parquet row group
at a time (artifacts.write_table bounds their size) and decoded by DataLoader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.store import artifacts, paths
from rvpt.errors import BadInput
from rvpt.images import check_skipped, decode_image
from rvpt.sampling import take_shots
from rvpt.world import FACTORS

if TYPE_CHECKING:
    from pipeline.config.params import Data, Params


@dataclass
class Chunk:
    """Decoded rows: uint8 pixels [n, 3, H, W], labels [n], and each row's index in the split."""

    pixels: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


class RowGroups(Dataset):
    """Row group i of the split, decoded; unreadable images are dropped and their reasons kept."""

    def __init__(self, groups: list[tuple[Path, int, int]], size: int, max_pixels: int, where: str):
        self.groups, self.size, self.max_pixels, self.where = groups, size, max_pixels, where

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        file, group, first = self.groups[i]
        blobs = pq.ParquetFile(file).read_row_group(group, columns=["image"]).column("image").to_pylist()
        pixels, index, skipped = [], [], []
        for offset, blob in enumerate(blobs):
            try:
                pixels.append(decode_image(blob, self.size, f"{self.where} row {first + offset}", self.max_pixels)[0])
                index.append(first + offset)
            except BadInput as error:
                skipped.append(str(error))
        shape = (0, self.size, self.size, 3)
        return (torch.from_numpy(np.stack(pixels) if pixels else np.zeros(shape, np.uint8)),
                torch.tensor(index, dtype=torch.long), skipped)


class Split:
    """One Parquet file (or folder of part-*.parquet) of the interchange schema, read lazily."""

    def __init__(self, path: str | Path, data: "Data", made_by: str):
        path = artifacts.require(path, made_by)
        files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
        try:
            columns = pq.read_schema(files[0]).names
            small = [name for name in columns if name == "label" or name.startswith("factor_")]
            table = pa.concat_tables([pq.read_table(file, columns=small) for file in files])
            self.groups, first = [], 0
            for file in files:
                metadata = pq.ParquetFile(file).metadata
                for group in range(metadata.num_row_groups):
                    self.groups.append((file, group, first))
                    first += metadata.row_group(group).num_rows
        except (pa.ArrowInvalid, OSError, IndexError) as error:
            raise BadInput(f"{path}: not a readable Parquet table ({error})") from None
        if "label" not in columns or "image" not in columns:
            raise BadInput(f"{path}: missing columns (needs image and label; made by `{made_by}`)")
        self.path, self.data = path, data
        self.labels = torch.from_numpy(artifacts.labels(table))
        self.factors = {name: np.asarray(table.column(f"factor_{name}").to_pylist(), dtype=object)
                        for name in FACTORS if f"factor_{name}" in table.column_names}
        self.checked = False
        self.keep = data.fits_decoded(len(self.labels))
        self.decoded: list[Chunk] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, size: int, workers: int = 0, pin_memory: bool = False) -> Iterator[Chunk]:
        """Every readable row, in order, at most `size` at a time: a row group is decoded whole
        (it stays uint8), and its float copies are made a batch at a time."""
        for chunk in self.chunks(workers, pin_memory):
            for rows in torch.arange(len(chunk.labels)).split(size):
                yield Chunk(chunk.pixels[rows], chunk.labels[rows], chunk.index[rows])

    def chunks(self, workers: int = 0, pin_memory: bool = False) -> Iterator[Chunk]:
        """Every readable row, in order, a row group at a time.

        Unreadable images are skipped within data.max_bad_fraction of the split, as when a split
        is decoded whole; past it the pass ends in BadInput before anything is written.
        """
        if self.decoded is not None:
            yield from self.decoded
            return
        rows = RowGroups(self.groups, self.data.image_size, self.data.max_image_pixels, str(self.path))
        loader = DataLoader(rows, batch_size=None, num_workers=workers, pin_memory=pin_memory)
        skipped, decoded = [], []
        for pixels, index, reasons in loader:
            skipped += reasons
            if len(pixels):
                chunk = Chunk(pixels.permute(0, 3, 1, 2), self.labels[index], index)
                if self.keep:
                    decoded.append(chunk)
                yield chunk
        check_skipped(skipped, len(self), self.data.max_bad_fraction)
        if self.keep:  # only after a whole pass whose unreadable rows were within bounds
            self.decoded = decoded
        if skipped and not self.checked:
            artifacts.warn(f"{self.path}: skipped {len(skipped)} of {len(self)} unreadable images "
                           f"(first: {skipped[0]})")
        self.checked = True


def load_fewshot(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """The shots as uint8 [N, 3, H, W] (converted batch by batch where they are used), and their labels."""
    path = paths.FEWSHOT / "train.parquet"
    table = artifacts.read_table(path, "rvpt stage sample")
    try:
        rows = take_shots(table.column("shot_rank").to_numpy(), params.sample.shots)
    except ValueError as error:
        raise BadInput(f"--shots {params.sample.shots}: {error} (rerun `rvpt stage sample` with more)") from None
    images, kept = artifacts.decode_pixels(table.take(rows), params.data, str(path))
    subset = table.take(rows[kept])
    return images, torch.from_numpy(artifacts.labels(subset))
