"""The losses RVPT combines: zero-shot cross-entropy and the feature-repelling loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def zero_shot_logits(image_features: torch.Tensor, class_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP logits: scaled cosine similarity to (already normalised) text class embeddings."""
    return logit_scale * F.normalize(image_features, dim=-1) @ class_embeddings.T


def feature_repelling(prompted_cls: torch.Tensor, frozen_cls: torch.Tensor, margin: float = -1.0) -> torch.Tensor:
    """L_FR: mean over blocks and batch of max(cos(prompted CLS, frozen CLS), margin).

    Inputs are [N, blocks, width]. Minimising it pushes the prompted CLS away from the frozen
    encoder's; margin = -1 is the plain loss and margin = 1 switches it off (plain VPT).
    """
    cosine = F.cosine_similarity(prompted_cls, frozen_cls.detach(), dim=-1)
    return cosine.clamp(min=margin).mean()
