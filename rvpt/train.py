"""Contrastive (CLIP) training on image-text pairs: the victim's pretraining or fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from open_clip.loss import ClipLoss
from tqdm.auto import tqdm

from rvpt.images import normalize
from rvpt.resume import Checkpointing
from rvpt.schedule import warmup_cosine


@dataclass
class ClipTrainConfig:
    steps: int
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0


def train_clip(model, images: torch.Tensor, tokens: torch.Tensor, cfg: ClipTrainConfig,
               desc: str = "pretrain", checkpointing: Checkpointing | None = None,
               on_step: Callable[[int], None] | None = None) -> tuple[list[float], int]:
    """AdamW + warm-up/cosine on the symmetric InfoNCE loss; returns the loss at every step and
    the step it resumed from (0 for a fresh start).

    `images` are [N, 3, H, W] in [0, 1]; `tokens` are [N, context] token ids. With
    `checkpointing`, the whole training state is saved every few steps and a matching saved
    state is resumed bit-exactly: the same final weights as a run that was never interrupted.
    `on_step(step)` is called after every optimizer step (benchmarks time it).
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    criterion = ClipLoss()
    # Training mode matters only for dropout-like layers; the tiny configs have none, and
    # keeping eval() keeps patch dropout off, as for every other use of the backbone here.
    model.eval()
    losses = []
    order = torch.randperm(len(images), generator=generator)
    cursor = start = 0
    saved = checkpointing.load() if checkpointing else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        order, cursor, start, losses = saved["order"], saved["cursor"], saved["step"], saved["losses"]
    for step in tqdm(range(start, cfg.steps), desc=desc, disable=None, initial=start, total=cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        batch = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup)
        image_features, text_features, logit_scale = model(normalize(images[batch]), tokens[batch])
        loss = criterion(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        losses.append(loss.item())
        if on_step:
            on_step(step)
        if checkpointing and checkpointing.due(step + 1, cfg.steps):
            checkpointing.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "generator": generator.get_state(), "order": order, "cursor": cursor,
                                "step": step + 1, "losses": losses})
    return losses, start
