"""params.yaml's `scan` section: the trigger-inversion scanner's settings (rvpt/scan.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.params_data import Strict
from pipeline.params_defenses import MAX_BATCH, MAX_LR, MAX_STEPS, MAX_WEIGHT
from rvpt import scan


class Scan(Strict):
    steps: int = Field(gt=0, le=MAX_STEPS)
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    lr: float = Field(gt=0, le=MAX_LR)
    success: float = Field(gt=0, le=1)
    cost: float = Field(gt=0, le=MAX_WEIGHT)
    adjust_every: int = Field(gt=0, le=MAX_STEPS)
    check_images: int = Field(gt=0, le=MAX_BATCH)
    threshold: float = Field(gt=0, le=MAX_WEIGHT)
    word_candidates: int = Field(gt=0, le=MAX_BATCH)
    kinds: list[Literal[scan.KINDS]] = Field(min_length=1, max_length=len(scan.KINDS))
    held_out: int = Field(gt=0, le=10 ** 9)

    def config(self, seed: int) -> scan.Config:
        return scan.Config(**self.model_dump(exclude={"kinds", "held_out"}), kinds=tuple(dict.fromkeys(self.kinds)),
                           seed=seed)
