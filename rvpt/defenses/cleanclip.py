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
from open_clip.loss import ClipLoss

from rvpt.defenses.augment import drop_and_swap_words, shift_and_jitter
from rvpt.defenses.base import ZeroShot, freeze, load_whole_model, save_whole_model
from rvpt import compute
from rvpt.defenses.loop import DefenderData, Schedule, descend, steps
from rvpt.images import normalize
from rvpt.zeroshot import unit


@dataclass(kw_only=True)
class Config(Schedule):
    """AdamW."""

    pairs: str                    # "pairs": the defender's clean image-text pairs; "fewshot": shots + templates
    budget: int
    ssl_weight: float


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
    device = cfg.placement.device
    tuned = copy.deepcopy(model).to(device)
    freeze(tuned)
    tuned.requires_grad_(True)
    tuned.logit_scale.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    contrastive = ClipLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    history = {"loss": [], "multimodal": [], "self_supervised": []}
    for rows, share in steps(optimizer, len(images), cfg, desc, history, (generator,)):
        if len(rows) < 2 and compute.world_size() == 1:  # under torchrun every process takes every step
            continue
        texts = [captions[i] for i in rows.tolist()]
        batch = unit(images[rows], device)
        with cfg.placement.autocast():
            image = tuned.encode_image(normalize(batch), normalize=True).float()
            image_aug = tuned.encode_image(normalize(shift_and_jitter(batch, generator)), normalize=True).float()
            text = tuned.encode_text(tokenize(texts).to(device), normalize=True).float()
            text_aug = tuned.encode_text(tokenize([drop_and_swap_words(t, rng) for t in texts]).to(device),
                                         normalize=True).float()
        scale = tuned.logit_scale.exp()
        multimodal = contrastive(image, text, scale)
        self_supervised = contrastive(image, image_aug, scale) + contrastive(text, text_aug, scale)
        loss = multimodal + cfg.ssl_weight * self_supervised
        descend(optimizer, loss, share)
        history["loss"].append(loss.item())
        history["multimodal"].append(multimodal.item())
        history["self_supervised"].append(self_supervised.item())
    freeze(tuned)
    return ZeroShot(tuned, tokenize, templates), history


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return {n: p for n, p in defended.model.named_parameters() if n != "logit_scale"}


save, load = save_whole_model, load_whole_model
