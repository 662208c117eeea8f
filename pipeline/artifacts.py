"""Reading and writing the pipeline's artifacts: Parquet tables, JSON, atomic output folders."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rvpt.errors import BadInput
from rvpt.images import decode_many, to_unit_tensor

if TYPE_CHECKING:
    from pipeline.params import Data


def warn(message: str) -> None:
    """A line on stderr for something the user should know but that does not stop the stage."""
    print(f"rvpt: warning: {message}", file=sys.stderr, flush=True)


SCHEMA = pa.schema([
    ("image", pa.binary()),
    ("caption", pa.string()),
    ("label", pa.int32()),
    ("poisoned", pa.bool_()),
])


def require(path: str | Path, made_by: str) -> Path:
    """An upstream output that must exist; names the stage that makes it when it does not."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: missing upstream output (made by `{made_by}`)")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yields a temporary sibling folder and renames it to `path` only if the block succeeds.

    A stage killed midway therefore never leaves a half-written output under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield temporary
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def write_text(path: str | Path, text: str) -> None:
    """Writes a temporary sibling, then renames it: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json(path: str | Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, made_by: str):
    path = require(path, made_by)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: not valid JSON ({error})") from None


def write_table(path: str | Path, columns: dict, extra: dict | None = None) -> None:
    """Writes one Parquet file with the interchange schema plus optional extra columns."""
    arrays = {name: pa.array(columns[name], type=SCHEMA.field(name).type) for name in SCHEMA.names}
    for name, values in (extra or {}).items():
        arrays[name] = pa.array(values)
    pq.write_table(pa.table(arrays), str(path), compression="zstd")


def write_shards(folder: str | Path, columns: dict, shard_rows: int, extra: dict | None = None) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(columns["label"])
    paths = []
    for index, start in enumerate(range(0, n, shard_rows)):
        part = slice(start, start + shard_rows)
        path = folder / f"part-{index:05d}.parquet"
        write_table(path, {k: v[part] for k, v in columns.items()},
                    {k: v[part] for k, v in (extra or {}).items()})
        paths.append(path)
    return paths


def read_table(path: str | Path, made_by: str) -> pa.Table:
    """One Parquet file, or every part-*.parquet in a folder, in order."""
    path = require(path, made_by)
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not files:
        raise BadInput(f"{path}: no part-*.parquet shards (made by `{made_by}`)")
    try:
        table = pa.concat_tables([pq.read_table(str(f)) for f in files])
    except (pa.ArrowInvalid, OSError) as error:
        raise BadInput(f"{path}: not a readable Parquet table ({error})") from None
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise BadInput(f"{path}: missing columns {missing}")
    return table


def decode_images(table: pa.Table, data: "Data", where: str) -> tuple[torch.Tensor, np.ndarray]:
    """The table's readable images as a float tensor [M, 3, H, W] in [0, 1], and their row indices.

    Unreadable images are skipped and counted on stderr, up to data.max_bad_fraction of the
    table; past that the stage fails with exit code 2 (BadInput).
    """
    decoded = decode_many(table.column("image").to_pylist(), data.image_size, where,
                          data.max_bad_fraction, data.max_image_pixels)
    if decoded.skipped:
        warn(f"{where}: skipped {len(decoded.skipped)} of {table.num_rows} unreadable images "
             f"(first: {decoded.skipped[0]})")
    return to_unit_tensor(decoded.pixels), decoded.kept


def labels(table: pa.Table) -> np.ndarray:
    return table.column("label").to_numpy().astype(np.int64)


def write_curve(path: str | Path, losses: list[float]) -> None:
    """A loss curve as step,loss CSV (what `dvc plots` and the MLflow artifact view read)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in enumerate(losses))
