"""Blended (Chen et al., 2017): a fixed full-image pattern mixed into every image."""
from __future__ import annotations

import torch

from rvpt.attacks.base import Attack, seeded


class Blended(Attack):
    """(1 - ratio) * image + ratio * pattern, with a uniform-noise pattern drawn once from `seed`."""

    name = "blended"

    def __init__(self, image_size: int, ratio: float = 0.2, seed: int = 0):
        if not 0 < ratio < 1:
            raise ValueError(f"blend ratio must be in (0, 1), got {ratio}")
        self.ratio = ratio
        self.pattern = torch.rand(3, image_size, image_size, generator=seeded(seed))

    def apply(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return (1 - self.ratio) * images + self.ratio * self.pattern

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern}
