"""params.yaml's `pretrain.clean` and `pretrain.poisoned` schedules, validated where CLIP is
trained (the pretrain stage, `check`): rvpt/train.py's ClipTrainConfig."""
from __future__ import annotations

from typing import Literal

from pipeline.config.params import Params
from pipeline.config.sections import section, validated
from rvpt.train import ClipTrainConfig

Schedule = section(ClipTrainConfig, "ClipTraining")


def schedule_of(params: Params, which: Literal["clean", "poisoned"]):
    """The validated schedule block; `settings()` gives ClipTrainConfig's values."""
    found = params._sections.get(("pretrain", which))
    if found is None:
        raw = getattr(params.pretrain, which)
        found = params._sections[("pretrain", which)] = validated(Schedule, raw, ("pretrain", which), params)
    return found
