"""BadNet: a fixed noise patch pasted onto the image (Gu et al., 2017)."""
from __future__ import annotations

import torch

from rvpt.attacks.base import Attack


class BadNet(Attack):
    """A noise patch of `size` (a fraction of the image side) at a fixed corner or a random spot.

    The noise pattern is drawn once from `seed` and is the same on every image: it is the trigger.
    """

    name = "badnet"

    def __init__(self, image_size: int, size: float = 0.1875, location: str = "fixed", seed: int = 0):
        if location not in ("fixed", "random"):
            raise ValueError(f"location must be 'fixed' or 'random', got {location!r}")
        self.side = max(1, round(size * image_size))
        if self.side > image_size:
            raise ValueError(f"patch size {size} exceeds the image")
        self.image_size = image_size
        self.location = location
        generator = torch.Generator().manual_seed(seed)
        self.patch = torch.rand(3, self.side, self.side, generator=generator)
        self.seed = seed

    def corners(self, n: int) -> torch.Tensor:
        """Top-left corners [n, 2]; the fixed spot is the bottom-right corner.

        Random spots are drawn afresh from the seed on every call, so the same images always get
        the same spots and every model is scored on identical triggered images.
        """
        last = self.image_size - self.side
        if self.location == "fixed":
            return torch.full((n, 2), last, dtype=torch.long)
        return torch.randint(0, last + 1, (n, 2), generator=torch.Generator().manual_seed(self.seed + 1))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        for i, (y, x) in enumerate(self.corners(len(images)).tolist()):
            out[i, :, y:y + self.side, x:x + self.side] = self.patch
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"patch": self.patch}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["patch"].shape != self.patch.shape:
            raise ValueError(f"trigger patch shape {tuple(state['patch'].shape)} != {tuple(self.patch.shape)}")
        self.patch = state["patch"].float()
