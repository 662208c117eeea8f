"""RVPT and plain VPT: deep visual prompts on a frozen CLIP, with or without feature repelling.

loss = CE(zero-shot logits against frozen text class embeddings) + alpha * L_FR.
alpha = 0 is plain VPT; the prompts are the only trainable tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rvpt.images import normalize
from rvpt.losses import feature_repelling, zero_shot_logits
from rvpt.prompts import DeepPrompts, PromptedVisionEncoder, frozen_block_cls
from rvpt.schedule import warmup_cosine


@dataclass
class PromptTuningConfig:
    tokens: int = 16
    first_block: int = 1
    alpha: float = 2.0
    margin: float = -1.0
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    init_std: float = 0.02
    seed: int = 0


def freeze(model) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()


def tune_prompts(model, images: torch.Tensor, labels: torch.Tensor, class_embeds: torch.Tensor,
                 cfg: PromptTuningConfig, desc: str = "tune") -> tuple[PromptedVisionEncoder, dict]:
    """Trains deep prompts on few-shot `images` ([N, 3, H, W] in [0, 1]); returns the encoder and history.

    The few-shot images are not augmented, so the frozen encoder's CLS tokens are computed
    once and reused every epoch instead of running a second forward pass per step.
    """
    freeze(model)
    visual = model.visual
    depth = len(visual.transformer.resblocks)
    width = visual.class_embedding.shape[-1]
    prompts = DeepPrompts(depth - cfg.first_block, cfg.tokens, width, cfg.init_std, cfg.seed)
    encoder = PromptedVisionEncoder(visual, prompts, cfg.first_block)
    inputs = normalize(images)
    with torch.no_grad():
        frozen_cls = frozen_block_cls(visual, inputs, cfg.first_block)
        logit_scale = model.logit_scale.exp()
    optimizer = torch.optim.SGD(prompts.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, -(-len(images) // cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    history = {"loss": [], "ce": [], "fr": [], "train_accuracy": []}
    step = 0
    for _ in tqdm(range(cfg.epochs), desc=desc, disable=None):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, cfg.lr)
            features, cls = encoder(inputs[batch], return_cls=True)
            logits = zero_shot_logits(features, class_embeds, logit_scale)
            ce = F.cross_entropy(logits, labels[batch])
            fr = feature_repelling(cls, frozen_cls[batch], cfg.margin)
            loss = ce + cfg.alpha * fr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["loss"].append(loss.item())
            history["ce"].append(ce.item())
            history["fr"].append(fr.item())
            history["train_accuracy"].append((logits.argmax(-1) == labels[batch]).float().mean().item())
            step += 1
    return encoder, history
