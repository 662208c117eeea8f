"""params.yaml's attack blocks: an attack kind, its poisoning rate, its trigger options and, for
the triggers an attacker trains first, that training's settings."""
from __future__ import annotations

import math
import typing
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from pipeline.params_data import MAX_TEXT, Strict
from pipeline.params_defenses import MAX_BATCH, MAX_LR, MAX_STEPS
from rvpt.attacks import REGISTRY as ATTACKS
from rvpt.errors import shown

TRAINED_TRIGGERS = ("badclip", "issba", "handcrafted")


class TriggerTraining(Strict):
    """What the attacker trains first: BadCLIP's patch, ISSBA's encoder-decoder, the handcrafted
    backdoor's patch (`images`: how many corpus images the attacker uses)."""
    steps: int = Field(gt=0, le=MAX_STEPS)
    batch_size: int = Field(gt=1, le=MAX_BATCH)
    lr: float = Field(gt=0, le=MAX_LR)
    images: int = Field(gt=0, le=10 ** 7)


class Attack(Strict):
    kind: str = Field(max_length=MAX_TEXT)
    target: str | None = Field(default=None, max_length=MAX_TEXT)  # None: the shared top-level `target`
    rate: float | None = Field(default=None, gt=0, le=1)  # poisoned share of the corpus; none for a weight edit
    options: dict[str, Any] = Field(default={}, max_length=20)
    optimise: TriggerTraining | None = None
    _inherited: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _known_kind(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack kind {shown(self.kind)}; known: {', '.join(sorted(ATTACKS))}")
        if ATTACKS[self.kind].edits_weights != (self.rate is None):
            raise ValueError("`rate` is required for an attack that poisons the corpus, and none is allowed for "
                             "one that edits the weights")
        if (self.kind in TRAINED_TRIGGERS) != (self.optimise is not None):
            raise ValueError(f"`optimise` is required for kinds {' and '.join(TRAINED_TRIGGERS)} and allowed only "
                             f"there")
        hints = typing.get_type_hints(ATTACKS[self.kind].__init__)
        for key, value in self.options.items():
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"options.{key}: {shown(value)} must be a finite number, a word or a flag")
            if isinstance(value, str) and len(value) > MAX_TEXT:
                raise ValueError(f"options.{key}: longer than {MAX_TEXT} characters")
            expected = hints.get(key)
            if expected in STRICT and not STRICT[expected](value):
                raise ValueError(f"options.{key}: {shown(value)} is not a {expected.__name__}")
        return self


# The option types a trigger's constructor declares, checked as strictly as every other param: a
# flag is not a number, and a quoted number is not a number.
STRICT = {bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
