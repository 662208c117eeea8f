"""A split that fits under data.preload_max_gib once decoded is decoded on its first whole pass
only (evaluate and scan read the same splits once per model); a larger one streams every pass."""
import shutil

import pytest
import torch

from pipeline.config.params import load
from pipeline.data.splits import Split
from rvpt.errors import BadInput


@pytest.mark.parametrize("limit_gib, kept", [(4, True), (0, False)])
def test_a_small_split_is_decoded_once_and_a_large_one_on_every_pass(reproduced, tmp_path, limit_gib, kept):
    path = tmp_path / "test.parquet"
    shutil.copy(reproduced / "data" / "clean" / "downstream" / "test.parquet", path)
    data = load(reproduced / "params.yaml", {}).data.model_copy(update={"preload_max_gib": limit_gib})
    split = Split(path, data, "rvpt stage download")
    first = list(split.batches(7))
    assert sum(len(batch.labels) for batch in first) == len(split)
    path.write_bytes(b"no longer a Parquet file")  # a second pass that reads the file fails
    if not kept:
        with pytest.raises((BadInput, OSError, ValueError)):
            list(split.batches(7))
        return
    again = list(split.batches(7))
    assert len(again) == len(first)
    for ours, theirs in zip(again, first):
        assert torch.equal(ours.pixels, theirs.pixels) and torch.equal(ours.labels, theirs.labels)
        assert torch.equal(ours.index, theirs.index)
