"""The paper's perturbations for perturbation resistivity (its Appendix B), applied to a split in order.

Each kind is small and class-preserving: Gaussian pixel noise, a 3x3 Gaussian blur, a colour
jitter (brightness and hue) and a horizontal flip. Random draws depend only on the seed and an
image's position in its split, so a split perturbed batch by batch gets the same images as the
split perturbed whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF

from rvpt.attacks.base import image_keys, key_uniform
from rvpt.diagnostics import PixelNoise

KINDS = ("noise", "blur", "jitter", "flip")


@dataclass(kw_only=True)
class Settings:
    noise_std: float          # in [0, 1] pixel units
    blur_kernel: int          # odd side of the Gaussian kernel; sigma is torchvision's default for it
    brightness: float         # factor drawn from [1 - brightness, 1 + brightness]
    hue: float                # shift drawn from [-hue, hue] turns of the colour wheel
    seed: int


def uniform(seed: int, index: torch.Tensor, salt: int) -> torch.Tensor:
    """One uniform draw in [0, 1) per image position, from a hash of (seed, salt, position)."""
    return key_uniform(image_keys(seed ^ salt, index))


class Perturber:
    """Perturbs the images of one split, batch by batch in split order, by kind."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.noise = PixelNoise(settings.noise_std, settings.seed)

    def __call__(self, kind: str, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if kind == "noise":
            return self.noise(images)
        if kind == "blur":
            return TF.gaussian_blur(images, [s.blur_kernel, s.blur_kernel])
        if kind == "flip":
            return images.flip(-1)
        if kind == "jitter":
            brightness = 1 + s.brightness * (2 * uniform(s.seed, index, 1) - 1)
            hue = s.hue * (2 * uniform(s.seed, index, 2) - 1)
            out = [TF.adjust_hue(TF.adjust_brightness(image, float(b)), float(h))
                   for image, b, h in zip(images, brightness, hue)]
            return torch.stack(out).clamp(0, 1)
        raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(KINDS)}")
