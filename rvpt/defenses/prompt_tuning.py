"""RVPT and plain VPT: deep visual prompts on a frozen CLIP, with or without feature repelling.

loss = CE(zero-shot logits against frozen text class embeddings) + alpha * L_FR.
alpha = 0 is plain VPT; the prompts are the only trainable tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rvpt.defenses.base import freeze
from rvpt.defenses.loop import DefenderData, Schedule, descend, scheduled_batches
from rvpt.defenses.prompted import Prompted
from rvpt.images import normalize
from rvpt.losses import feature_repelling, zero_shot_logits
from rvpt.prompts import DeepPrompts, PromptedVisionEncoder, frozen_block_cls, load_prompts, save_prompts

FILE = "prompts.safetensors"


@dataclass
class Config(Schedule):
    tokens: int = 16
    first_block: int = 1
    alpha: float = 2.0
    margin: float = -1.0
    init_std: float = 0.02


def fit(model, data: DefenderData, tokenize, templates: list[str], cfg: Config,
        desc: str = "tune") -> tuple[Prompted, dict]:
    """Trains deep prompts on the few-shot images; returns the prompted model and its history.

    The few-shot images are not augmented, so the frozen encoder's CLS tokens are computed
    once and reused every epoch instead of running a second forward pass per step.
    """
    freeze(model)
    visual = model.visual
    depth = len(visual.transformer.resblocks)
    width = visual.class_embedding.shape[-1]
    prompts = DeepPrompts(depth - cfg.first_block, cfg.tokens, width, cfg.init_std, cfg.seed)
    defended = Prompted(model, tokenize, templates, PromptedVisionEncoder(visual, prompts, cfg.first_block))
    class_embeds, _ = defended.classifier(data.classnames)
    inputs = normalize(data.images)
    with torch.no_grad():
        frozen_cls = frozen_block_cls(visual, inputs, cfg.first_block)
        logit_scale = model.logit_scale.exp()
    optimizer = torch.optim.SGD(prompts.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    history = {"loss": [], "ce": [], "fr": [], "train_accuracy": []}
    for batch in scheduled_batches(optimizer, len(inputs), cfg, desc, history):
        features, cls = defended.encoder(inputs[batch], return_cls=True)
        logits = zero_shot_logits(features, class_embeds, logit_scale)
        ce = F.cross_entropy(logits, data.labels[batch])
        fr = feature_repelling(cls, frozen_cls[batch], cfg.margin)
        loss = ce + cfg.alpha * fr
        descend(optimizer, loss)
        history["loss"].append(loss.item())
        history["ce"].append(ce.item())
        history["fr"].append(fr.item())
        history["train_accuracy"].append((logits.argmax(-1) == data.labels[batch]).float().mean().item())
    return defended, history


def trained(defended: Prompted) -> dict[str, torch.Tensor]:
    return {"prompts": defended.encoder.prompts.weight}


def save(defended: Prompted, folder: Path, model_cfg: dict, metadata: dict) -> None:
    save_prompts(folder / FILE, defended.encoder.prompts, defended.encoder.first_block, metadata)


def load(model, folder: Path, tokenize, templates: list[str]) -> Prompted:
    prompts, first_block, _ = load_prompts(folder / FILE)
    return Prompted(model, tokenize, templates, PromptedVisionEncoder(model.visual, prompts, first_block).eval())
