"""Stage `sample`: the defender's K-shot clean subset of the downstream train split.

Each class's draw is a fixed permutation for the seed, and the K-shot set is its first K
entries, so smaller K are nested in larger ones and `tune --shots k` can take a prefix.
The test and validation splits are never read.
"""
from __future__ import annotations

import numpy as np

from pipeline.store import artifacts, paths
from pipeline.config.params import Params
from pipeline.tracking.runs import stage
from rvpt.errors import BadInput
from rvpt.sampling import few_shot_indices

TRAIN = paths.DOWNSTREAM / "train.parquet"


def run(params: Params) -> str:
    shots = params.sample.shots
    artifacts.check_writable(paths.FEWSHOT)
    table = artifacts.read_table(TRAIN, "rvpt stage download")
    labels = artifacts.labels(table)
    try:
        chosen, rank = few_shot_indices(labels, shots, params.seed)
    except ValueError as error:
        raise BadInput(f"sample.shots: {error}") from None
    subset = table.take(chosen)
    columns = {name: subset.column(name).to_pylist() for name in artifacts.SCHEMA.names}
    extra = {"shot_rank": rank, "source_row": chosen.astype(np.int64)}
    logged = {"seed": params.seed, "shots": shots}
    with stage("sample", params, logged, inputs={"downstream train": TRAIN}) as log, log.output(paths.FEWSHOT) as out:
        artifacts.write_table(out / "train.parquet", columns, extra)
        log.record(out / "sample.json", {"shots": shots, "images": len(chosen)})
    return f"wrote {paths.FEWSHOT}: {shots} shots x {len(np.unique(labels))} classes = {len(chosen)} images"
