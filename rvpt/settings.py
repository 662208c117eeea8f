"""How a method declares its settings, once: the fields of its Config dataclass, each with its type,
its default and its bounds.

A `setting` is read from params.yaml (the pipeline builds its validation from these very fields,
pipeline/config/sections.py); a `runtime` field is set by the caller (where to run, the seed, a
checkpoint). Bounds are checked when a Config is made, by the library itself, so a Config built
by hand is held to them too.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import MISSING, Field

# Bounds no working setting comes near, low enough that the arithmetic stays finite.
MAX_STEPS = 10 ** 8
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 16
MAX_LR = 100.0
MAX_WEIGHT = 1000.0   # loss weights and weight decays

CHECKS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def setting(default=MISSING, *, ge=None, gt=None, le=None, lt=None, doc: str = "") -> Field:
    """A field params.yaml sets, with its bounds (None: unbounded on that side)."""
    bounds = {name: limit for name, limit in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if limit is not None}
    return dataclasses.field(default=default, metadata={"setting": True, "bounds": bounds, "doc": doc})


def runtime(default=MISSING, *, default_factory=MISSING) -> Field:
    """A field the caller sets when it runs the method; never read from params.yaml."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"setting": False})


def settings(cls) -> list[Field]:
    """The fields of a Config class that params.yaml sets."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("setting", False)]


def check(config) -> None:
    """Raises ValueError naming the first setting outside its bounds."""
    for f in settings(type(config)):
        value = getattr(config, f.name)
        for name, limit in f.metadata["bounds"].items():
            holds, symbol = CHECKS[name]
            if value is not None and not holds(value, limit):
                raise ValueError(f"{f.name}: {value!r} must be {symbol} {limit:g}")
