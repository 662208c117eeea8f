"""Full fine-tuning: every image-tower weight trained with cross-entropy on the few-shot set.

The text tower stays as it is and gives the class embeddings, as in the zero-shot head; the
defended model is an ordinary open_clip model again. With alpha > 0 the feature-repelling loss
is added, as in the paper's Table 8: each block's CLS from first_block on is pushed away from
the original model's CLS on the same image.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rvpt.defenses.base import ZeroShot, freeze, load_whole_model, save_whole_model
from rvpt.defenses.loop import Augmented, DefenderData, adapt, batch_images, descend, steps  # noqa: F401 (adapt: its `adapt`)
from rvpt.images import normalize
from rvpt.defenses.prompt_tuning import frozen_shot_cls
from rvpt.losses import feature_repelling, zero_shot_logits
from rvpt.model_config import ModelShape
from rvpt.settings import MAX_WEIGHT, setting
from rvpt.prompts import DeepPrompts, PromptedVisionEncoder, frozen_block_cls


KIND = "finetune"  # its name in params.yaml's `kind`


@dataclass(kw_only=True)
class Config(Augmented):
    """AdamW; loss = CE + alpha * L_FR over blocks first_block..L-1."""
    alpha: float = setting(ge=0, le=MAX_WEIGHT, doc="weight of L_FR; 0 is plain CE fine-tuning")
    first_block: int = setting(ge=0, doc="the first block whose CLS L_FR repels")


def fits(cfg: Config, shape: ModelShape) -> str | None:
    """L_FR reads a ViT's blocks; plain CE fine-tuning needs none."""
    if shape.vision_depth is None:
        return "alpha: L_FR needs a ViT image tower (blocks to read)" if cfg.alpha > 0 else None
    if cfg.first_block >= shape.vision_depth:
        return f"first_block: {cfg.first_block} must be below the {shape.vision_depth} vision blocks"
    return None


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
    repel = cfg.alpha > 0
    if repel:  # the tuned tower read block by block: a prompted encoder without prompt tokens
        depth, width = len(tuned.visual.transformer.resblocks), tuned.visual.class_embedding.shape[-1]
        blocks = PromptedVisionEncoder(tuned.visual, DeepPrompts(depth - cfg.first_block, 0, width), cfg.first_block)
        model.to(cfg.placement.device)
        frozen_cls = None if cfg.augment else frozen_shot_cls(model.visual, data, cfg)
    history = {"loss": [], "ce": [], "fr": [], "train_accuracy": []}
    for rows, share in steps(optimizer, len(data.labels), cfg, desc, history, (generator,)):
        labels = data.labels[rows].to(cfg.placement.device)
        images = normalize(batch_images(data, rows, cfg, generator))
        with cfg.placement.autocast():
            features, cls = blocks(images, return_cls=True) if repel else (tuned.encode_image(images), None)
        logits = zero_shot_logits(features.float(), class_embeds, logit_scale)
        ce = F.cross_entropy(logits, labels)
        loss = ce
        if repel:
            if frozen_cls is not None:
                frozen = frozen_cls[rows].to(cfg.placement.device)
            else:
                with torch.no_grad(), cfg.placement.autocast():
                    frozen = frozen_block_cls(model.visual, images, cfg.first_block)
            fr = feature_repelling(cls.float(), frozen.float())
            loss = ce + cfg.alpha * fr
            history["fr"].append(fr.item())
        descend(optimizer, loss, share)
        history["ce"].append(ce.item())
        history["loss"].append(loss.item())
        history["train_accuracy"].append((logits.argmax(-1) == labels).float().mean().item())
    freeze(tuned)
    return defended, {key: values for key, values in history.items() if values}


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return dict(defended.model.visual.named_parameters())


save, load = save_whole_model, load_whole_model
