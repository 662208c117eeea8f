"""Patch triggers: a square of pixels pasted onto the image.

BadNet (Gu et al., 2017) pastes a noise patch; TrojVQA adds a caption word to it; the
label-consistent attack pastes it on target-class images only; BadCLIP optimises it.
"""
from __future__ import annotations

import torch

from rvpt.attacks.base import Attack, seeded

LOCATIONS = ("corner", "centre", "random")


class PatchAttack(Attack):
    """A patch of side `size` x image side at the bottom-right corner, the centre, or a random spot.

    The patch pixels are drawn once from `seed` and are the same on every image: they are the trigger.
    """

    name = "patch"

    def __init__(self, image_size: int, size: float = 0.1875, location: str = "random", seed: int = 0):
        if location not in LOCATIONS:
            raise ValueError(f"location must be one of {', '.join(LOCATIONS)}, got {location!r}")
        if not 0 < size <= 1:
            raise ValueError(f"patch size must be a fraction of the image side in (0, 1], got {size}")
        self.side = max(1, round(size * image_size))
        self.image_size = image_size
        self.location = location
        self.seed = seed
        self.patch = torch.rand(3, self.side, self.side, generator=seeded(seed))

    def corners(self, n: int) -> torch.Tensor:
        """Top-left corners [n, 2].

        Random spots are drawn afresh from the seed on every call, so the same images always get
        the same spots and every model is scored on identical triggered images.
        """
        last = self.image_size - self.side
        if self.location == "corner":
            return torch.full((n, 2), last, dtype=torch.long)
        if self.location == "centre":
            return torch.full((n, 2), last // 2, dtype=torch.long)
        return torch.randint(0, last + 1, (n, 2), generator=seeded(self.seed + 1))

    def paste(self, images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """Differentiable in `patch`, so BadCLIP can optimise it through this very function."""
        out = images.clone()
        if self.location != "random":
            y, x = self.corners(1)[0].tolist()
            out[:, :, y:y + self.side, x:x + self.side] = patch
            return out
        for i, (y, x) in enumerate(self.corners(len(images)).tolist()):
            out[i, :, y:y + self.side, x:x + self.side] = patch
        return out

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.paste(images, self.patch)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"patch": self.patch}


class BadNet(PatchAttack):
    name = "badnet"


class TrojVQA(PatchAttack):
    """A centre patch plus a caption word: the backdoor needs both, as in TrojVQA's dual-key trigger."""

    name = "trojvqa"

    def __init__(self, image_size: int, size: float = 0.1875, location: str = "centre", seed: int = 0,
                 text_trigger: str = "cf"):
        super().__init__(image_size, size, location, seed)
        if not text_trigger.strip() or len(text_trigger.split()) != 1:
            raise ValueError(f"text_trigger must be one word, got {text_trigger!r}")
        self.text_trigger = text_trigger


class LabelConsistent(PatchAttack):
    """The patch goes on images that already show the target class; their captions stay true."""

    name = "label_consistent"
    label_consistent = True
