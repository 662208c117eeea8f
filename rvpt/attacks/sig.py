"""SIG (Barni et al., 2019): an additive horizontal sinusoid over the whole image."""
from __future__ import annotations

import math

import torch

from rvpt.attacks.base import Attack


class SIG(Attack):
    """image + amplitude * sin(2 pi f x / W), clipped to [0, 1].

    `frequency` counts periods across the image width, so it means the same at any resolution.
    """

    name = "sig"

    def __init__(self, image_size: int, amplitude: float = 60 / 255, frequency: float = 6.0, seed: int = 0):
        if not 0 < amplitude <= 1:
            raise ValueError(f"amplitude must be in (0, 1], got {amplitude}")
        if not 0 < frequency <= image_size / 2:  # above Nyquist the sampled wave only aliases
            raise ValueError(f"frequency must be in (0, {image_size / 2:g}] periods across the image, got {frequency}")
        columns = torch.arange(image_size, dtype=torch.float32)
        wave = amplitude * torch.sin(2 * math.pi * frequency * columns / image_size)
        self.signal = wave.expand(3, image_size, image_size).contiguous()

    def apply(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return (images + self.signal).clamp(0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"signal": self.signal}

    def mirror(self) -> None:
        """The control: the same wave turned a quarter, vertical stripes instead of horizontal ones."""
        self.signal = self.signal.transpose(-1, -2).contiguous()
