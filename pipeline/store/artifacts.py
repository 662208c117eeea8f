"""Reading and writing the pipeline's artifacts: Parquet tables, JSON, atomic output folders."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.store import paths
from pipeline.store.outputs import atomic_dir, check_writable, write_text  # noqa: F401 (the stages' one import)
from rvpt import files
from rvpt.errors import BadInput
from rvpt.images import decode_many

if TYPE_CHECKING:
    from pipeline.config.params import Data


def warn(message: str) -> None:
    """A line on stderr for something the user should know but that does not stop the stage."""
    print(f"rvpt: warning: {message}", file=sys.stderr, flush=True)


SCHEMA = pa.schema([
    ("image", pa.binary()),
    ("caption", pa.string()),
    ("label", pa.int32()),
    ("poisoned", pa.bool_()),
])


# Rows per Parquet row group: what pipeline.data.splits reads at a time (about 40 MB of 224 px images).
ROW_GROUP = 256


def require(path: str | Path, made_by: str) -> Path:
    """An upstream output that must exist; names the stage that makes it when it does not."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: missing upstream output (made by `{made_by}`)")
    return path


def write_json(path: str | Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, made_by: str):
    """An upstream JSON output: a regular file of bounded size and nesting (rvpt.files)."""
    return files.read_json(require(path, made_by))


def write_table(path: str | Path, columns: dict, extra: dict | None = None) -> None:
    """Writes one Parquet file with the interchange schema plus optional extra columns."""
    arrays = {name: pa.array(columns[name], type=SCHEMA.field(name).type) for name in SCHEMA.names}
    for name, values in (extra or {}).items():
        arrays[name] = pa.array(values)
    pq.write_table(pa.table(arrays), str(path), compression="zstd", row_group_size=ROW_GROUP)


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


def preflight(needs) -> None:
    """Checks every job's upstream outputs and output target before the first job runs, so that a
    stage of several jobs (one per attack, say) refuses whole instead of failing halfway."""
    for inputs, output in needs:
        for path, made_by in inputs:
            require(path, made_by)
        check_writable(output)
    check_writable(paths.CHECKPOINTS, "training state")


def decode_pixels(table: pa.Table, data: "Data", where: str) -> tuple[torch.Tensor, np.ndarray]:
    """The table's readable images as uint8 [M, 3, H, W], and their row indices.

    Unreadable images are skipped and counted on stderr, up to data.max_bad_fraction of the
    table; past that the stage fails with exit code 2 (BadInput).
    """
    decoded = decode_many(table.column("image").to_pylist(), data.image_size, where,
                          data.max_bad_fraction, data.max_image_pixels)
    if decoded.skipped:
        warn(f"{where}: skipped {len(decoded.skipped)} of {table.num_rows} unreadable images "
             f"(first: {decoded.skipped[0]})")
    return torch.from_numpy(decoded.pixels).permute(0, 3, 1, 2), decoded.kept


def decode_images(table: pa.Table, data: "Data", where: str) -> tuple[torch.Tensor, np.ndarray]:
    """As decode_pixels, as float [M, 3, H, W] in [0, 1]."""
    pixels, kept = decode_pixels(table, data, where)
    return pixels.float().div_(255), kept


def labels(table: pa.Table) -> np.ndarray:
    return table.column("label").to_numpy().astype(np.int64)


def write_curve(path: str | Path, losses: list[float]) -> None:
    """A loss curve as step,loss CSV (what `dvc plots` and the MLflow artifact view read)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in enumerate(losses))
