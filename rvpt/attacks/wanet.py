"""WaNet (Nguyen and Tran, 2021): a fixed, smooth warp of the image grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rvpt.attacks.base import Attack, seeded


class WaNet(Attack):
    """Warps every image by the same smooth displacement field.

    A random `grid` x `grid` field of offsets is upsampled bicubically to the image and scaled
    so that its largest displacement is `strength` x the image side, a size that means the same
    at 32 px and 224 px.
    """

    name = "wanet"

    def __init__(self, image_size: int, grid: int = 4, strength: float = 0.05, seed: int = 0):
        if not 2 <= grid <= image_size:  # a control point per pixel is already the finest field there is
            raise ValueError(f"grid must be 2 to {image_size} control points (the image side), got {grid}")
        if not 0 < strength < 0.5:
            raise ValueError(f"strength must be in (0, 0.5) of the image side, got {strength}")
        coarse = torch.rand(1, 2, grid, grid, generator=seeded(seed)) * 2 - 1
        field = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=True)
        # grid_sample coordinates span [-1, 1], i.e. 2 units per image side.
        field = field / field.abs().amax() * 2 * strength
        self.flow = (identity_grid(image_size) + field[0].permute(1, 2, 0)).clamp(-1, 1)

    def apply(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        grid = self.flow.expand(len(images), -1, -1, -1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"flow": self.flow}

    def mirror(self) -> None:
        """The control: the opposite warp, every displacement reversed."""
        identity = identity_grid(self.flow.shape[0]).to(self.flow.device)
        self.flow = (2 * identity - self.flow).clamp(-1, 1)


def identity_grid(side: int) -> torch.Tensor:
    """grid_sample's coordinates of every pixel, [side, side, 2] as (x, y) in [-1, 1]: no warp."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    return torch.stack([xs, ys], dim=-1)
