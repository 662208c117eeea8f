"""What a defense hands to evaluation: an image encoder and class weights for any list of class names.

Logits are normalize(features) @ weights.T + bias. Text-side defenses (CoOp) change the weights,
visual ones change the encoder, and a linear probe replaces both weights and bias for the one
task it was trained on. Evaluation therefore never needs to know which defense it scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rvpt import models
from rvpt.poisoning import with_text_trigger
from rvpt.prompts import frozen_block_cls
from rvpt.zeroshot import class_embeddings


class Defended(nn.Module):
    """Subclasses hold the CLIP they score as `self.model`."""

    #: False when the classifier has no text side, so a caption trigger cannot reach it.
    reads_text: bool = True

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Features of normalised images [N, 3, H, W]; the model's own unless the defense changes it."""
        return self.model.encode_image(images)

    def block_cls(self, images: torch.Tensor) -> torch.Tensor:
        """The CLS token after every block of the image tower, [N, blocks, width], for the
        layer-wise diagnostics."""
        return frozen_block_cls(self.model.visual, images, 0)

    def classifier(self, classnames: list[str], text_trigger: str = "") -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weights [C, D], bias [C]) for these classes, or None if this defense cannot name them."""
        raise NotImplementedError

    def logits(self, features: torch.Tensor, classifier: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """In fp32 where the features are (the CPU, for cached features), wherever the model runs."""
        weights, bias = (tensor.to(features.device, torch.float32) for tensor in classifier)
        return F.normalize(features, dim=-1) @ weights.T + bias


class ZeroShot(Defended):
    """A CLIP scored the CLIP way: cosine to text class embeddings averaged over templates."""

    def __init__(self, model, tokenize, templates: list[str]):
        super().__init__()
        self.model = model
        self.tokenize = tokenize
        self.templates = list(templates)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def classifier(self, classnames, text_trigger=""):
        key = (tuple(classnames), text_trigger)
        if key not in self._cache:
            templates = [with_text_trigger(t, text_trigger) for t in self.templates]
            weights = class_embeddings(self.model, self.tokenize, classnames, templates)
            self._cache[key] = (weights, torch.zeros(len(classnames)))
        return self._cache[key]


def freeze(model) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()


def save_whole_model(defended: ZeroShot, folder, model_cfg: dict, metadata: dict) -> None:
    """Defenses that change CLIP's weights save an ordinary open_clip model (local-dir layout)."""
    models.save(defended.model, model_cfg, folder)


def load_whole_model(model, folder, tokenize, templates) -> ZeroShot:
    tuned, _ = models.load(folder)
    return ZeroShot(tuned, tokenize, templates)
