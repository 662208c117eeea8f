"""Registries that find their members: every module of a package, imported in name order.

A method is found where it is written, so adding one is its module (and its params.yaml block),
with no list to update beside it. pipeline/store/closure.py knows that a registry's module runs
every module of its folder.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def modules(package: str) -> list[ModuleType]:
    """The modules of the package named `package` (its own __init__ may be the caller, still running)."""
    path = importlib.import_module(package).__path__
    return [importlib.import_module(f"{package}.{info.name}")
            for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name)]


def unique(pairs, what: str) -> dict:
    """{name: member} from (name, member, where) triples, refusing a name declared twice."""
    found, where = {}, {}
    for name, member, place in pairs:
        if name in found:
            raise ValueError(f"{place} and {where[name]} both declare the {what} {name!r}")
        found[name], where[name] = member, place
    return found
