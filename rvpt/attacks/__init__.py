"""Backdoor attacks, one module each, built by kind from their params.

Every class of this folder's modules that sets its own `name` is an attack of that kind: adding
one is its module and its block in params.yaml (rvpt.discovery finds it)."""
from __future__ import annotations

from rvpt.attacks.badclip import BadCLIP, optimise_patch
from rvpt.attacks.base import Attack, Attacker, TriggerTraining
from rvpt.attacks.handcrafted import Handcrafted
from rvpt.attacks.issba import ISSBA, bit_accuracy, train_stega
from rvpt.attacks.patch import PatchAttack
from rvpt.discovery import modules, unique

REGISTRY: dict[str, type[Attack]] = unique(
    ((kind.__dict__["name"], kind, f"{kind.__module__}.{kind.__name__}") for module in modules(__name__)
     for kind in vars(module).values() if isinstance(kind, type) and issubclass(kind, Attack)
     and kind.__module__ == module.__name__ and kind.__dict__.get("name")), "attack kind")


def build(kind: str, image_size: int, **options) -> Attack:
    if kind not in REGISTRY:
        raise ValueError(f"unknown attack kind {kind!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[kind](image_size=image_size, **options)


__all__ = ["Attack", "Attacker", "BadCLIP", "Handcrafted", "ISSBA", "PatchAttack", "REGISTRY", "TriggerTraining",
           "bit_accuracy", "build", "optimise_patch", "train_stega"]
