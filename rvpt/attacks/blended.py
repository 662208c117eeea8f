"""Blended (Chen et al., 2017): a full-image noise pattern mixed into every image."""
from __future__ import annotations

import torch

from rvpt.attacks.base import Attack, check_pattern, image_uniform, seeded


class Blended(Attack):
    """(1 - ratio) * image + ratio * pattern, with uniform noise as the pattern.

    pattern "fixed": one noise image drawn once from `seed` (Chen et al.'s Blended).
    pattern "fresh": new uniform noise for every image, as the public CLIP-backdoor code bases
    (CleanCLIP, BadCLIP) build it, clipped to [0, 1]: the trigger is the noise's statistics.
    """

    name = "blended"

    def __init__(self, image_size: int, ratio: float = 0.2, seed: int = 0, pattern: str = "fixed"):
        if not 0 < ratio < 1:
            raise ValueError(f"blend ratio must be in (0, 1), got {ratio}")
        self.ratio = ratio
        self.seed = seed
        self.fresh = check_pattern(pattern) == "fresh"
        self.pattern = torch.rand(3, image_size, image_size, generator=seeded(seed))
        self.mirrored = False

    def apply(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if not self.fresh:
            return (1 - self.ratio) * images + self.ratio * self.pattern
        index = torch.arange(len(images)) if index is None else index
        noise = image_uniform(self.seed, index, tuple(images.shape[1:])).to(images.device, images.dtype)
        noise = 1 - noise if self.mirrored else noise
        return ((1 - self.ratio) * images + self.ratio * noise).clamp(0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern}

    def mirror(self) -> None:
        """The control: the blended pattern inverted (each image's own, for fresh noise)."""
        self.pattern = 1 - self.pattern
        self.mirrored = not self.mirrored
