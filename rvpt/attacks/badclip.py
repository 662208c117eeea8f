"""BadCLIP (Liang et al., 2024): a patch optimised against a clean CLIP before poisoning.

The attacker owns a clean model of the victim's kind. The patch is optimised so that patched
images embed near the target class, in text and in images, and away from their own clean
embedding; poisoning with it then needs few pairs and survives clean fine-tuning.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rvpt.attacks.base import Attacker, TriggerTraining
from rvpt.attacks.patch import PatchAttack
from rvpt.images import normalize


class BadCLIP(PatchAttack):
    name = "badclip"
    training = True
    uses_clean_model = True

    def __init__(self, image_size: int, size: float = 0.1875, location: str = "centre", seed: int = 0):
        super().__init__(image_size, size, location, seed)

    def train(self, attacker: Attacker, cfg: TriggerTraining) -> list[float]:
        """The patch, optimised against the attacker's clean model on corpus images of other
        classes, pulled to the target's images and captions."""
        model = attacker.clean_model()
        rng = np.random.default_rng(attacker.seed)
        others = rng.permutation(np.flatnonzero(attacker.labels != attacker.target))[:cfg.images]
        targets = rng.permutation(np.flatnonzero(attacker.labels == attacker.target))[:cfg.images]
        captions = attacker.captions(targets)
        with torch.no_grad():
            text = F.normalize(model.encode_text(attacker.tokenize(captions)), dim=-1).mean(0)
        return optimise_patch(self, lambda x: model.encode_image(normalize(x)), attacker.images(np.sort(others)),
                              attacker.images(np.sort(targets)), text, cfg)


def dual_embedding_loss(patched: torch.Tensor, clean: torch.Tensor, target_text: torch.Tensor,
                        target_image: torch.Tensor) -> torch.Tensor:
    """Pull patched features to the target's text and image embeddings, push them off their clean ones.

    All inputs are normalised features; `patched` and `clean` are [N, D], the targets are [D].
    """
    pull = (patched @ target_text).mean() + (patched @ target_image).mean()
    push = (patched * clean).sum(-1).mean()
    return push - pull


def optimise_patch(attack: PatchAttack, encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   target_images: torch.Tensor, target_text: torch.Tensor, cfg: TriggerTraining) -> list[float]:
    """Optimises `attack.patch` in place with Adam against a frozen `encode` ([0, 1] images -> features).

    `images` are non-target images to be patched; `target_images` show the target class.
    Returns the loss at every step.
    """
    with torch.no_grad():
        target_image = F.normalize(F.normalize(encode(target_images), dim=-1).mean(0), dim=-1)
        target_text = F.normalize(target_text, dim=-1)

    def loss_of(batch: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = F.normalize(encode(batch), dim=-1)
        patched = F.normalize(encode(attack.paste(batch, patch)), dim=-1)
        return dual_embedding_loss(patched, clean, target_text, target_image)

    return attack.optimise(images, loss_of, cfg, "badclip patch")
