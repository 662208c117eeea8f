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
from rvpt.defenses.loop import DefenderData, Schedule, descend, scheduled_batches
from rvpt.images import normalize
from rvpt.losses import zero_shot_logits


@dataclass
class Config(Schedule):
    """AdamW: `momentum` is unused."""

    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 0.1


def fit(model, data: DefenderData, tokenize, templates, cfg: Config, desc: str = "tune") -> tuple[ZeroShot, dict]:
    freeze(model)
    tuned = copy.deepcopy(model)
    freeze(tuned)
    defended = ZeroShot(tuned, tokenize, templates)
    class_embeds, _ = defended.classifier(data.classnames)
    tuned.visual.requires_grad_(True)
    optimizer = torch.optim.AdamW(tuned.visual.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    inputs = normalize(data.images)
    logit_scale = tuned.logit_scale.exp().detach()
    history = {"loss": [], "train_accuracy": []}
    for batch in scheduled_batches(optimizer, len(inputs), cfg, desc, history):
        logits = zero_shot_logits(tuned.encode_image(inputs[batch]), class_embeds, logit_scale)
        loss = F.cross_entropy(logits, data.labels[batch])
        descend(optimizer, loss)
        history["loss"].append(loss.item())
        history["train_accuracy"].append((logits.argmax(-1) == data.labels[batch]).float().mean().item())
    freeze(tuned)
    return defended, history


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return dict(defended.model.visual.named_parameters())


save, load = save_whole_model, load_whole_model
