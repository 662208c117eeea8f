"""BadCLIP (Liang et al., 2024): a patch optimised against a clean CLIP before poisoning.

The attacker owns a clean model of the victim's kind. The patch is optimised so that patched
images embed near the target class, in text and in images, and away from their own clean
embedding; poisoning with it then needs few pairs and survives clean fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from rvpt.attacks.base import seeded
from rvpt.attacks.patch import PatchAttack
from rvpt.progress import progress


class BadCLIP(PatchAttack):
    name = "badclip"

    def __init__(self, image_size: int, size: float = 0.1875, location: str = "centre", seed: int = 0):
        super().__init__(image_size, size, location, seed)


@dataclass
class PatchOptimisation:
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.01
    seed: int = 0


def dual_embedding_loss(patched: torch.Tensor, clean: torch.Tensor, target_text: torch.Tensor,
                        target_image: torch.Tensor) -> torch.Tensor:
    """Pull patched features to the target's text and image embeddings, push them off their clean ones.

    All inputs are normalised features; `patched` and `clean` are [N, D], the targets are [D].
    """
    pull = (patched @ target_text).mean() + (patched @ target_image).mean()
    push = (patched * clean).sum(-1).mean()
    return push - pull


def optimise_patch(attack: PatchAttack, encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   target_images: torch.Tensor, target_text: torch.Tensor, cfg: PatchOptimisation) -> list[float]:
    """Optimises `attack.patch` in place with Adam against a frozen `encode` ([0, 1] images -> features).

    `images` are non-target images to be patched; `target_images` show the target class.
    Returns the loss at every step.
    """
    with torch.no_grad():
        target_image = F.normalize(F.normalize(encode(target_images), dim=-1).mean(0), dim=-1)
        target_text = F.normalize(target_text, dim=-1)
    patch = attack.patch.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([patch], lr=cfg.lr)
    generator = seeded(cfg.seed)
    losses = []
    for _ in progress(range(cfg.steps), "badclip patch"):
        batch = images[torch.randint(0, len(images), (cfg.batch_size,), generator=generator)]
        with torch.no_grad():
            clean = F.normalize(encode(batch), dim=-1)
        patched = F.normalize(encode(attack.paste(batch, patch)), dim=-1)
        loss = dual_embedding_loss(patched, clean, target_text, target_image)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            patch.clamp_(0, 1)
        losses.append(loss.item())
    attack.patch = patch.detach()
    return losses
