"""Seeded augmentations: random-resized crops and flips for few-shot tuning (as the VPT and CoOp
code bases train), and the cheap ones CleanCLIP's self-supervised terms use."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def crop_and_flip(images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float],
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop + RandomHorizontalFlip, for a whole batch at once.

    Each image gets a crop covering a share in `scale` of its area, with aspect ratio in `ratio`,
    resized back to full size (bilinear) and mirrored with probability 1/2. The draws come from
    `generator` on the CPU, so the crops do not depend on the device.
    """
    n = len(images)
    area = torch.empty(n).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    # In grid_sample's coordinates the image spans [-1, 1]: a crop of width w has its centre
    # within 1 - w of the middle.
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shift_and_jitter(images: torch.Tensor, generator: torch.Generator, max_shift: float = 0.125,
                     brightness: float = 0.2) -> torch.Tensor:
    """Random translation by up to `max_shift` x the side (edge-padded) and a random brightness scale.

    No flips or large crops: a mirrored or cropped glyph can be another class.
    """
    n, _, h, w = images.shape
    pad = max(1, round(max_shift * h))
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    shifted = torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(offsets)])
    scale = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * brightness
    return (shifted * scale.to(images.device)).clamp(0, 1)


def drop_and_swap_words(caption: str, rng: np.random.Generator, drop: float = 0.1) -> str:
    """EDA-style text augmentation: drop each word with probability `drop`, then swap two words."""
    words = caption.split()
    kept = [word for word in words if rng.random() >= drop] or words[:1]
    if len(kept) > 1:
        i, j = rng.choice(len(kept), size=2, replace=False)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)
