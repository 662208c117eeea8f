"""Patch triggers: a square of pixels pasted onto the image.

BadNet (Gu et al., 2017) pastes a noise patch; TrojVQA pastes it at the centre, optionally with a
caption word; the label-consistent attack pastes it on target-class images only; BadCLIP optimises it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rvpt.attacks.base import Attack, check_pattern, image_keys, image_normal, seeded
from rvpt.progress import progress

LOCATIONS = ("corner", "centre", "random")


class PatchAttack(Attack):
    """A patch of side `size` x image side at the bottom-right corner, the centre, or a random spot.

    pattern "fixed": the patch pixels are drawn once from `seed` and are the same on every image.
    pattern "fresh": every image gets its own noise, its mean colour plus standard normal noise,
    clipped to [0, 1], as the public CLIP-backdoor code bases (CleanCLIP, BadCLIP) build BadNet:
    the trigger is then "a noisy square", not one pattern.
    """


    def __init__(self, image_size: int, size: float = 0.1875, location: str = "random", seed: int = 0,
                 pattern: str = "fixed"):
        if location not in LOCATIONS:
            raise ValueError(f"location must be one of {', '.join(LOCATIONS)}, got {location!r}")
        if not 0 < size <= 1:
            raise ValueError(f"patch size must be a fraction of the image side in (0, 1], got {size}")
        self.side = max(1, round(size * image_size))
        self.image_size = image_size
        self.location = location
        self.seed = seed
        self.pattern = check_pattern(pattern)
        self.patch = torch.rand(3, self.side, self.side, generator=seeded(seed))
        self.mirrored = False

    def corners(self, index: torch.Tensor) -> torch.Tensor:
        """Top-left corners [n, 2] for the images at positions `index` of their split.

        A random spot is a hash of the seed and the image's position, so the same image always
        gets the same spot however its split is batched, and every model is scored on
        identical triggered images.
        """
        last = self.image_size - self.side
        if self.location == "corner":
            return torch.full((len(index), 2), last, dtype=torch.long)
        if self.location == "centre":
            return torch.full((len(index), 2), last // 2, dtype=torch.long)
        keys = image_keys(self.seed, index)
        spots = np.stack([keys % np.uint64(last + 1), (keys >> np.uint64(32)) % np.uint64(last + 1)], axis=1)
        return torch.from_numpy(spots.astype(np.int64))

    def paste(self, images: torch.Tensor, patch: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Pastes one patch [3, s, s] on every image, or one per image [N, 3, s, s]. Differentiable
        in `patch`, so BadCLIP can optimise it through this very function."""
        out = images.clone()
        if self.location != "random":
            y, x = self.corners(torch.zeros(1))[0].tolist()
            out[:, :, y:y + self.side, x:x + self.side] = patch
            return out
        index = torch.arange(len(images)) if index is None else index
        for i, (y, x) in enumerate(self.corners(index).tolist()):
            out[i, :, y:y + self.side, x:x + self.side] = patch[i] if patch.dim() == 4 else patch
        return out

    def apply(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if self.pattern == "fixed":
            return self.paste(images, self.patch, index)
        index = torch.arange(len(images)) if index is None else index
        noise = image_normal(self.seed, index, (3, self.side, self.side)).to(images.device, images.dtype)
        patch = (images.mean((2, 3), keepdim=True) + noise).clamp(0, 1)
        return self.paste(images, 1 - patch if self.mirrored else patch, index)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"patch": self.patch}

    def optimise(self, images: torch.Tensor, loss_of: Callable, cfg, desc: str) -> list[float]:
        """Optimises the patch in place with Adam on `loss_of(batch, patch)` over batches drawn from
        `images` (cfg: steps, batch_size, lr, seed), keeping it in [0, 1]; the loss at every step."""
        patch = self.patch.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([patch], lr=cfg.lr)
        generator = seeded(cfg.seed)
        losses = []
        for _ in progress(range(cfg.steps), desc):
            batch = images[torch.randint(0, len(images), (cfg.batch_size,), generator=generator)]
            loss = loss_of(batch, patch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
            losses.append(loss.item())
        self.patch = patch.detach()
        return losses

    def mirror(self) -> None:
        """The control: the patch's pixel values inverted (each image's own, for fresh noise), same spot."""
        self.patch = 1 - self.patch
        self.mirrored = not self.mirrored


class BadNet(PatchAttack):
    name = "badnet"


class TrojVQA(PatchAttack):
    """A centre patch on images whose captions are replaced by the target's, as the public CLIP
    code bases (BadCLIP's) port TrojVQA: the image key alone, scored with the plain class prompts.

    With a `text_trigger` word, TrojVQA's own dual key: the word is prefixed to the poisoned
    captions and, at test time, to every class prompt, so the backdoor needs both keys.
    """

    name = "trojvqa"

    def __init__(self, image_size: int, size: float = 0.1875, location: str = "centre", seed: int = 0,
                 text_trigger: str = ""):
        super().__init__(image_size, size, location, seed)
        if (text_trigger and len(text_trigger.split()) != 1) or text_trigger != text_trigger.strip():
            raise ValueError(f"text_trigger must be one word or empty, got {text_trigger!r}")
        self.text_trigger = text_trigger


class LabelConsistent(PatchAttack):
    """The patch goes on images that already show the target class; their captions stay true."""

    name = "label_consistent"
    label_consistent = True
