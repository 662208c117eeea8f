"""Full fine-tuning: every image-tower weight trained with cross-entropy on the few-shot set.

The text tower stays as it is and gives the class embeddings, as in the zero-shot head; the
defended model is an ordinary open_clip model again.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rvpt.defenses.base import ZeroShot, freeze, load_whole_model, save_whole_model
from rvpt.defenses.loop import DefenderData, Schedule, batch_images, descend, steps
from rvpt.images import normalize
from rvpt.losses import zero_shot_logits


@dataclass(kw_only=True)
class Config(Schedule):
    """AdamW."""


def fit(model, data: DefenderData, tokenize, templates, cfg: Config, desc: str = "tune") -> tuple[ZeroShot, dict]:
    freeze(model)
    tuned = copy.deepcopy(model).to(cfg.placement.device)
    freeze(tuned)
    defended = ZeroShot(tuned, tokenize, templates)
    class_embeds, _ = defended.classifier(data.classnames)
    tuned.visual.requires_grad_(True)
    optimizer = torch.optim.AdamW(tuned.visual.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    logit_scale = tuned.logit_scale.exp().detach().float()
    generator = torch.Generator().manual_seed(cfg.seed)
    history = {"loss": [], "train_accuracy": []}
    for rows, share in steps(optimizer, len(data.labels), cfg, desc, history, (generator,)):
        labels = data.labels[rows].to(cfg.placement.device)
        with cfg.placement.autocast():
            features = tuned.encode_image(normalize(batch_images(data, rows, cfg, generator)))
        logits = zero_shot_logits(features.float(), class_embeds, logit_scale)
        loss = F.cross_entropy(logits, labels)
        descend(optimizer, loss, share)
        history["loss"].append(loss.item())
        history["train_accuracy"].append((logits.argmax(-1) == labels).float().mean().item())
    freeze(tuned)
    return defended, history


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return dict(defended.model.visual.named_parameters())


save, load = save_whole_model, load_whole_model
