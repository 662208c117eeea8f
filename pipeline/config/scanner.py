"""params.yaml's `scan` section, validated where the scanner runs (the scan stage, `rvpt scan`,
`rvpt defend`, `check`): rvpt/scan.py's Config, and where the pipeline runs it."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config.params import Params
from pipeline.config.sections import section, validated
from rvpt import scan

Scan = section(scan.Config, "Scan",
               held_out=(Annotated[int, Field(gt=0, le=10 ** 9)], ...),   # validation images for the held-out ASR
               defended=(Literal["residual", "full"], ...))               # a defended cell: residual ASR, or a full scan


def scanner(params: Params):
    """The validated `scan` block; `settings()` gives rvpt.scan.Config's values."""
    found = params._sections.get(("scan",))
    if found is None:
        found = params._sections[("scan",)] = validated(Scan, params.scan, ("scan",), params)
    return found


def config(params: Params) -> scan.Config:
    """The scanner's Config: the block's settings, seeded with the world's seed."""
    return scan.Config(**scanner(params).settings(), seed=params.seed)
