"""RVPT and plain VPT: deep visual prompts on a frozen CLIP, with or without feature repelling.

loss = CE(zero-shot logits against frozen text class embeddings) + alpha * L_FR.
alpha = 0 is plain VPT; the prompts are the only trainable tensor. Two settings make named
variants that depart from the paper: `centre` repels batch-centred CLS tokens, and `ce_scale`
runs CE at a fixed logit scale (CLIP's 100) instead of the model's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rvpt.defenses.base import freeze
from rvpt.model_config import ModelShape
from rvpt.defenses import loop
from rvpt.defenses.loop import DefenderData, SGDSchedule, batch_images, descend, steps
from rvpt.defenses.prompted import Prompted
from rvpt.images import normalize
from rvpt.losses import feature_repelling, zero_shot_logits
from rvpt.settings import MAX_WEIGHT, setting
from rvpt.prompts import (DeepPrompts, PromptedVisionEncoder, frozen_block_cls, frozen_from_prefix, load_prompts,
                          save_prompts, shared_prefix)
from rvpt.zeroshot import unit

KIND = "prompt"  # its name in params.yaml's `kind`


FILE = "prompts.safetensors"


@dataclass(kw_only=True)
class Config(SGDSchedule):
    alpha: float = setting(ge=0, le=MAX_WEIGHT, doc="weight of L_FR; 0 is plain VPT")
    tokens: int = setting(gt=0, doc="b: prompt tokens per block")
    first_block: int = setting(ge=0, doc="D: blocks D..L-1 (0-based) get prompts")
    init_std: float = setting(gt=0, le=10)
    margin: float = setting(ge=-1, le=1, doc="L_FR = mean(max(cos, margin)); -1 is the paper's plain loss")
    centre: bool = setting(False, doc="a named variant: L_FR on batch-centred CLS tokens (rvpt.losses)")
    ce_scale: float | None = setting(None, gt=0, le=1000, doc="a named variant: CE at this logit scale (None: "
                                                               "the model's own, the paper's)")


def fits(cfg: Config, shape: ModelShape) -> str | None:
    """Prompts need a ViT tower deeper than first_block, and at most PROMPTS_PER_TOKEN x its tokens."""
    if shape.vision_depth is None:
        return "first_block: prompts need a ViT image tower (blocks to prompt)"
    if cfg.first_block >= shape.vision_depth:
        return f"first_block: {cfg.first_block} must be below the {shape.vision_depth} vision blocks"
    most = PROMPTS_PER_TOKEN * (shape.patch_tokens + 1)
    if cfg.tokens > most:
        return f"tokens: {cfg.tokens} is over {most}, {PROMPTS_PER_TOKEN} x the model's {shape.patch_tokens + 1} image tokens"
    return None


def adapt(settings: dict, shape) -> dict:
    """One prompt per patch token, as the paper's b = 50 at a 7 x 7 grid + 1; the batch within the shots."""
    fitted = loop.adapt(settings, shape)
    return {**fitted, "tokens": shape.patch_grid} if shape.patch_grid else fitted


PROMPTS_PER_TOKEN = 4  # the paper uses b = 50 prompts for 50 image tokens; more than 4x is no setting anyone needs


def fit(model, data: DefenderData, tokenize, templates: list[str], cfg: Config,
        desc: str = "tune") -> tuple[Prompted, dict]:
    """Trains deep prompts on the few-shot images; returns the prompted model and its history.

    Blocks before first_block see no prompt, so the frozen and the prompted encoder share that
    part of every pass. Without augmentation the frozen CLS tokens of the shots are computed
    once, before training; with it, the frozen blocks run on each step's augmented batch, and
    only when L_FR counts (alpha > 0).
    """
    freeze(model)
    model.to(cfg.placement.device)
    visual = model.visual
    depth = len(visual.transformer.resblocks)
    width = visual.class_embedding.shape[-1]
    prompts = DeepPrompts(depth - cfg.first_block, cfg.tokens, width, cfg.init_std, cfg.seed)
    encoder = PromptedVisionEncoder(visual, prompts.to(cfg.placement.device), cfg.first_block)
    defended = Prompted(model, tokenize, templates, encoder)
    class_embeds, _ = defended.classifier(data.classnames)
    logit_scale = model.logit_scale.exp().detach().float() if cfg.ce_scale is None else torch.tensor(cfg.ce_scale)
    # Plain VPT on augmented batches skips the frozen pass; L_FR is still logged where it is free.
    repel = cfg.alpha > 0
    frozen_cls = None if cfg.augment else frozen_shot_cls(visual, data, cfg)
    optimizer = torch.optim.SGD(prompts.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = {"loss": [], "ce": [], "fr": [], "train_accuracy": []}
    for rows, share in steps(optimizer, len(data.labels), cfg, desc, history, (generator,)):
        labels = data.labels[rows].to(cfg.placement.device)
        with cfg.placement.autocast():
            with torch.no_grad():
                prefix = shared_prefix(visual, normalize(batch_images(data, rows, cfg, generator)), cfg.first_block)
                frozen = frozen_from_prefix(visual, prefix, cfg.first_block) if repel and cfg.augment else None
            features, cls = encoder.from_prefix(prefix, return_cls=True)
        if frozen_cls is not None:
            frozen = frozen_cls[rows].to(cfg.placement.device)
        logits = zero_shot_logits(features.float(), class_embeds, logit_scale)
        ce = F.cross_entropy(logits, labels)
        loss = ce
        if frozen is not None:
            fr = feature_repelling(cls.float(), frozen.float(), cfg.margin, cfg.centre)
            loss = ce + cfg.alpha * fr
            history["fr"].append(fr.item())
        descend(optimizer, loss, share)
        history["loss"].append(loss.item())
        history["ce"].append(ce.item())
        history["train_accuracy"].append((logits.argmax(-1) == labels).float().mean().item())
    return defended, {key: values for key, values in history.items() if values}


@torch.no_grad()
def frozen_shot_cls(visual, data: DefenderData, cfg: Config) -> torch.Tensor:
    """The frozen encoder's CLS tokens of every shot, [N, blocks, width] fp32 on the CPU, computed
    cfg.inference_batch images at a time."""
    out = []
    for start in range(0, len(data.labels), cfg.inference_batch):
        images = normalize(unit(data.images[start:start + cfg.inference_batch], cfg.placement.device))
        with cfg.placement.autocast():
            out.append(frozen_block_cls(visual, images, cfg.first_block).float().cpu())
    return torch.cat(out)


def trained(defended: Prompted) -> dict[str, torch.Tensor]:
    return {"prompts": defended.encoder.prompts.weight}


def save(defended: Prompted, folder: Path, model_cfg: dict, metadata: dict) -> None:
    save_prompts(folder / FILE, defended.encoder.prompts, defended.encoder.first_block, metadata)


def load(model, folder: Path, tokenize, templates: list[str]) -> Prompted:
    prompts, first_block, _ = load_prompts(folder / FILE)
    return Prompted(model, tokenize, templates, PromptedVisionEncoder(model.visual, prompts, first_block).eval())
