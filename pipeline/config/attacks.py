"""params.yaml's `attacks` section: an attack kind, its poisoning rate, its trigger options (the
keyword arguments its class takes, with the types they declare) and what it trains first
(rvpt's TriggerTraining). Every stage reads attacks, so this section is validated with the file."""
from __future__ import annotations

import math
import typing
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from pipeline.config.data import MAX_TEXT, Strict
from pipeline.config.sections import section
from rvpt.attacks import REGISTRY as ATTACKS
from rvpt.attacks import TriggerTraining
from rvpt.errors import shown

Training = section(TriggerTraining, "TriggerTraining")

# The types a trigger's constructor declares for its options, checked as strictly as every other
# param: a flag is not a number, and a quoted number is not a number.
OPTION_TYPES = {bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
                int: lambda v: isinstance(v, int) and not isinstance(v, bool),
                float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}


class Attack(Strict):
    kind: str = Field(max_length=MAX_TEXT)
    target: str | None = Field(default=None, max_length=MAX_TEXT)  # None: the shared top-level `target`
    rate: float | None = Field(default=None, gt=0, le=1)  # poisoned share of the corpus; none for a weight edit
    options: dict[str, Any] = Field(default={}, max_length=20)
    optimise: Training | None = None
    _inherited: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _as_the_attack_declares(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack kind {shown(self.kind)}; known: {', '.join(sorted(ATTACKS))}")
        attack = ATTACKS[self.kind]
        if attack.edits_weights != (self.rate is None):
            raise ValueError("`rate` is required for an attack that poisons the corpus, and none is allowed for "
                             "one that edits the weights")
        if attack.training != (self.optimise is not None):
            trained = " and ".join(sorted(k for k, a in ATTACKS.items() if a.training))
            raise ValueError(f"`optimise` is required for kinds {trained} and allowed only there")
        hints = typing.get_type_hints(attack.__init__)
        for key, value in self.options.items():
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"options.{key}: {shown(value)} must be a finite number, a word or a flag")
            if isinstance(value, str) and len(value) > MAX_TEXT:
                raise ValueError(f"options.{key}: longer than {MAX_TEXT} characters")
            expected = hints.get(key)
            if expected in OPTION_TYPES and not OPTION_TYPES[expected](value):
                raise ValueError(f"options.{key}: {shown(value)} is not a {expected.__name__}")
        return self
