"""params.yaml's `scan` section: the trigger-inversion scanner's settings (rvpt/scan.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.params_data import Strict
from pipeline.params_defenses import MAX_BATCH, MAX_LR, MAX_STEPS, MAX_WEIGHT

# rvpt.scan.KINDS, spelled out so that validating params does not import the scanner (a test keeps them equal).
KINDS = ("patch", "blend", "caption")


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
    kinds: list[Literal[KINDS]] = Field(min_length=1, max_length=len(KINDS))
    held_out: int = Field(gt=0, le=10 ** 9)
    defended: Literal["residual", "full"]
