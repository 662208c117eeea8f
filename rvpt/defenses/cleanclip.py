"""CleanCLIP (Bansal et al., 2023): fine-tune the whole CLIP on clean image-text pairs with the
multimodal InfoNCE loss plus in-modality self-supervised terms (image vs augmented image,
caption vs augmented caption), weighted equally by default.

The in-modality terms make each encoder learn its own modality's structure again, which
weakens the spurious trigger-to-target-caption link the poisoned pairs taught.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from rvpt.defenses.augment import drop_and_swap_words, shift_and_jitter
from rvpt.defenses.base import ZeroShot, freeze, load_whole_model, save_whole_model
from rvpt.defenses.loop import DefenderData, Schedule, descend, scheduled_batches
from rvpt.images import normalize


@dataclass
class Config(Schedule):
    """AdamW: `momentum` is unused."""

    pairs: str = "pairs"          # "pairs": the defender's clean image-text pairs; "fewshot": shots + templates
    budget: int = 2000
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.1
    ssl_weight: float = 1.0


def fewshot_pairs(data: DefenderData, templates: list[str], rng: np.random.Generator) -> list[str]:
    return [templates[rng.integers(len(templates))].format(data.classnames[label]) for label in data.labels.tolist()]


def fit(model, data: DefenderData, tokenize, templates, cfg: Config, desc: str = "tune") -> tuple[ZeroShot, dict]:
    rng = np.random.default_rng(cfg.seed)
    if cfg.pairs == "fewshot":
        images, captions = data.images, fewshot_pairs(data, templates, rng)
    elif data.pair_images is None or data.pair_captions is None:
        raise ValueError("cleanclip with pairs='pairs' needs the defender's clean image-text pairs")
    else:
        images, captions = data.pair_images[:cfg.budget], data.pair_captions[:cfg.budget]
    freeze(model)
    tuned = copy.deepcopy(model)
    freeze(tuned)
    tuned.requires_grad_(True)
    tuned.logit_scale.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    contrastive = ClipLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    history = {"loss": [], "multimodal": [], "self_supervised": []}
    for batch in scheduled_batches(optimizer, len(images), cfg, desc, history, (generator,)):
        if len(batch) < 2:
            continue
        texts = [captions[i] for i in batch.tolist()]
        image = tuned.encode_image(normalize(images[batch]), normalize=True)
        image_aug = tuned.encode_image(normalize(shift_and_jitter(images[batch], generator)), normalize=True)
        text = tuned.encode_text(tokenize(texts), normalize=True)
        text_aug = tuned.encode_text(tokenize([drop_and_swap_words(t, rng) for t in texts]), normalize=True)
        scale = tuned.logit_scale.exp()
        multimodal = contrastive(image, text, scale)
        self_supervised = contrastive(image, image_aug, scale) + contrastive(text, text_aug, scale)
        loss = multimodal + cfg.ssl_weight * self_supervised
        descend(optimizer, loss)
        history["loss"].append(loss.item())
        history["multimodal"].append(multimodal.item())
        history["self_supervised"].append(self_supervised.item())
    freeze(tuned)
    return ZeroShot(tuned, tokenize, templates), history


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return {n: p for n, p in defended.model.named_parameters() if n != "logit_scale"}


save, load = save_whole_model, load_whole_model
