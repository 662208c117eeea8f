"""CleanCLIP (Bansal et al., 2023): fine-tune the whole CLIP on clean image-text pairs with the
multimodal InfoNCE loss plus in-modality self-supervised terms (image vs augmented image,
caption vs augmented caption), weighted equally by default.

The in-modality terms make each encoder learn its own modality's structure again, which
weakens the spurious trigger-to-target-caption link the poisoned pairs taught.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from open_clip.loss import ClipLoss

from rvpt.defenses.augment import drop_and_swap_words, shift_and_jitter
from rvpt.defenses.base import ZeroShot, freeze, load_whole_model, save_whole_model
from rvpt import compute
from rvpt.defenses.loop import DefenderData, Schedule, descend, schedule, steps
from rvpt.images import normalize
from rvpt.settings import MAX_BATCH, MAX_WEIGHT, setting
from rvpt.token_rows import UsedRows, caption_ids
from rvpt.zeroshot import unit


KIND = "cleanclip"  # its name in params.yaml's `kind`


@dataclass(kw_only=True)
class Config(Schedule):
    """AdamW."""

    batch_size: int = setting(gt=1, le=MAX_BATCH, doc="pairs per step: InfoNCE needs two or more")
    pairs: Literal["pairs", "fewshot"] = setting(doc="pairs: the defender's clean image-text pairs; fewshot: "
                                                     "the shots captioned with the templates")
    budget: int = setting(gt=1, le=10 ** 9, doc="clean pairs it reads (pairs: fewshot reads the shots)")
    ssl_weight: float = setting(ge=0, le=MAX_WEIGHT, doc="weight of the in-modality self-supervised terms")


def adapt(settings: dict, shape) -> dict:
    """Reads the defender's pairs when there are any (no more than there are), else the shots captioned."""
    if not shape.pairs:
        return {**settings, "pairs": "fewshot"}
    return {**settings, "pairs": "pairs", "budget": min(settings["budget"], shape.pairs)}


def pairs_needed(cfg: Config) -> int:
    """Clean image-text pairs the defense reads beside the shots."""
    return cfg.budget if cfg.pairs == "pairs" else 0


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
    contrastive = ClipLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    history = {"loss": [], "multimodal": [], "self_supervised": []}
    with UsedRows(tuned, caption_ids(tokenize, captions)) as used:
        optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        for rows, share in steps(optimizer, len(images), cfg, desc, history, (generator, Drawn(rng))):
            if not taken(rows):
                continue
            texts = [captions[i] for i in rows.tolist()]
            batch = unit(images[rows], device)
            with cfg.placement.autocast():
                image = tuned.encode_image(normalize(batch), normalize=True).float()
                image_aug = tuned.encode_image(normalize(shift_and_jitter(batch, generator)), normalize=True).float()
                text = tuned.encode_text(used.renumber(tokenize(texts)).to(device), normalize=True).float()
                augmented = tokenize([drop_and_swap_words(t, rng) for t in texts])
                text_aug = tuned.encode_text(used.renumber(augmented).to(device), normalize=True).float()
            scale = tuned.logit_scale.exp()
            multimodal = contrastive(image, text, scale)
            self_supervised = contrastive(image, image_aug, scale) + contrastive(text, text_aug, scale)
            loss = multimodal + cfg.ssl_weight * self_supervised
            descend(optimizer, loss, share)
            history["loss"].append(loss.item())
            history["multimodal"].append(multimodal.item())
            history["self_supervised"].append(self_supervised.item())
        # Every step taken, resumed ones too, decayed the rows the captions never use.
        used.decays = [1 - lr * cfg.weight_decay for lr, (rows, _) in schedule(len(images), cfg) if taken(rows)]
    freeze(tuned)
    return ZeroShot(tuned, tokenize, templates), history


class Drawn:
    """The caption augmentation's numpy generator, saved and restored with a training state as
    torch's generators are, so a resumed run drops and swaps the same words."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def taken(rows: torch.Tensor) -> bool:
    """Whether a step with these rows trains: under torchrun every process takes every step."""
    return len(rows) >= 2 or compute.world_size() > 1


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return {n: p for n, p in defended.model.named_parameters() if n != "logit_scale"}


save, load = save_whole_model, load_whole_model
