"""Backdoor attacks, one module each, built by kind from their params."""
from __future__ import annotations

from rvpt.attacks.badclip import BadCLIP, PatchOptimisation, optimise_patch
from rvpt.attacks.base import Attack
from rvpt.attacks.blended import Blended
from rvpt.attacks.handcrafted import Handcrafted
from rvpt.attacks.issba import ISSBA, StegaTraining, bit_accuracy, train_stega
from rvpt.attacks.patch import BadNet, LabelConsistent, PatchAttack, TrojVQA
from rvpt.attacks.sig import SIG
from rvpt.attacks.wanet import WaNet

REGISTRY: dict[str, type[Attack]] = {
    kind.name: kind for kind in (BadNet, Blended, SIG, WaNet, TrojVQA, BadCLIP, ISSBA, LabelConsistent, Handcrafted)
}


def build(kind: str, image_size: int, **options) -> Attack:
    if kind not in REGISTRY:
        raise ValueError(f"unknown attack kind {kind!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[kind](image_size=image_size, **options)


__all__ = ["Attack", "BadCLIP", "Handcrafted", "ISSBA", "StegaTraining", "bit_accuracy", "train_stega", "PatchAttack", "PatchOptimisation", "REGISTRY", "build", "optimise_patch"]
