"""Backdoor attacks, one module each, built by name from their params."""
from __future__ import annotations

from rvpt.attacks.badnet import BadNet
from rvpt.attacks.base import Attack

REGISTRY: dict[str, type[Attack]] = {BadNet.name: BadNet}


def build(kind: str, image_size: int, **options) -> Attack:
    if kind not in REGISTRY:
        raise ValueError(f"unknown attack kind {kind!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[kind](image_size=image_size, **options)


__all__ = ["Attack", "BadNet", "REGISTRY", "build"]
