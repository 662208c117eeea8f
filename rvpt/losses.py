"""The losses RVPT combines: zero-shot cross-entropy and the feature-repelling loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def zero_shot_logits(image_features: torch.Tensor, class_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP logits: scaled cosine similarity to (already normalised) text class embeddings."""
    return logit_scale * F.normalize(image_features, dim=-1) @ class_embeddings.T


def feature_repelling(prompted_cls: torch.Tensor, frozen_cls: torch.Tensor, margin: float = -1.0,
                      centre: bool = False) -> torch.Tensor:
    """L_FR: mean over blocks and batch of max(cos(prompted CLS, frozen CLS), margin).

    Inputs are [N, blocks, width]. Minimising it pushes the prompted CLS away from the frozen
    encoder's; margin = -1 is the plain loss and margin = 1 switches it off (plain VPT).

    With `centre` (a named variant, not the paper's loss), each encoder's CLS tokens are first
    centred on their batch mean per block, so the loss repels each image's own features: one
    offset shared by every image, which the plain loss rewards, changes nothing here.
    """
    frozen_cls = frozen_cls.detach()
    if centre:
        prompted_cls = prompted_cls - prompted_cls.mean(0, keepdim=True)
        frozen_cls = frozen_cls - frozen_cls.mean(0, keepdim=True)
    cosine = F.cosine_similarity(prompted_cls, frozen_cls, dim=-1)
    return cosine.clamp(min=margin).mean()

