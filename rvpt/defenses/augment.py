"""Cheap, seeded augmentations for the self-supervised terms of CleanCLIP."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
    return (shifted * scale).clamp(0, 1)


def drop_and_swap_words(caption: str, rng: np.random.Generator, drop: float = 0.1) -> str:
    """EDA-style text augmentation: drop each word with probability `drop`, then swap two words."""
    words = caption.split()
    kept = [word for word in words if rng.random() >= drop] or words[:1]
    if len(kept) > 1:
        i, j = rng.choice(len(kept), size=2, replace=False)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)
