"""Contrastive (CLIP) training on image-text pairs: the victim's pretraining or fine-tuning."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from rvpt import compute
from rvpt.errors import Diverged
from rvpt.images import normalize
from rvpt.resume import Checkpointing
from rvpt.schedule import warmup_cosine
from rvpt.settings import MAX_BATCH, MAX_LR, MAX_STEPS, MAX_WEIGHT, check, runtime, setting
from rvpt.token_rows import UsedRows
from rvpt.progress import progress


@dataclass(kw_only=True)
class ClipTrainConfig:
    """The victim's CLIP training: AdamW with a linear warm-up and a cosine decay."""

    steps: int = setting(gt=0, le=MAX_STEPS)
    batch_size: int = setting(128, gt=1, le=MAX_BATCH, doc="pairs per step: InfoNCE needs two or more")
    lr: float = setting(2e-3, gt=0, le=MAX_LR)
    weight_decay: float = setting(0.1, ge=0, le=MAX_WEIGHT)
    warmup: int = setting(100, ge=0, le=MAX_STEPS, doc="steps of linear warm-up")
    frozen: Literal["none", "image", "text"] = setting("none", doc="a tower kept fixed: image (locked-image "
                                                                     "tuning, as LiT) or text")
    seed: int = runtime(0)
    device: str = runtime("cpu")
    precision: str = runtime("fp32")
    compile: bool = runtime(False)
    workers: int = runtime(0)            # DataLoader processes decoding batches ahead of the step

    def __post_init__(self):
        check(self)


def batch_plan(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """[steps, batch_size] row indices: shuffled passes over the data, a fresh permutation when
    one runs out. A function of the seed alone, so a resumed run needs only the step."""
    generator = torch.Generator().manual_seed(seed)
    order, cursor, plan = torch.randperm(n, generator=generator), 0, []
    for _ in range(steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        plan.append(order[cursor:cursor + batch_size])
        cursor += batch_size
    return torch.stack(plan)


class PlannedBatches(Dataset):
    """Batch i of the plan (this process's share of it), as (images in [0, 1], tokens)."""

    def __init__(self, images, tokens: torch.Tensor, plan: torch.Tensor):
        self.images, self.tokens, self.plan = images, tokens, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        rows = compute.local_part(self.plan[i])
        return self.images[rows], self.tokens[rows]


def train_clip(model, images, tokens: torch.Tensor, cfg: ClipTrainConfig,
               desc: str = "pretrain", checkpointing: Checkpointing | None = None,
               on_step: Callable[[int], None] | None = None) -> tuple[list[float], int]:
    """AdamW + warm-up/cosine on the symmetric InfoNCE loss; returns the loss at every step and
    the step it resumed from (0 for a fresh start).

    `images` are [N, 3, H, W] in [0, 1], or anything indexed the same way (rvpt.images.LazyImages
    decodes on demand); `tokens` are [N, context] token ids. Under torchrun each process takes its
    share of every global batch and gradients are averaged by DDP, with open_clip's loss
    gathering features with their gradients, so a step equals the single-process step.
    With `checkpointing`, the whole training state is saved every few steps and a matching saved
    state is resumed bit-exactly. `on_step(step)` is called after every optimizer step.
    """
    with UsedRows(model, tokens) as used:  # the embedding is not weight-decayed here: nothing to replay
        return _train(model, images, used.renumber(tokens), cfg, desc, checkpointing, on_step)


def in_training(name: str, frozen: str) -> bool:
    """Whether parameter `name` trains when the `frozen` tower is kept fixed. The logit scale
    belongs to neither tower and always trains."""
    if frozen == "image":
        return not name.startswith("visual.")
    if frozen == "text":
        return name.startswith(("visual.", "logit_"))
    return True


def _train(model, images, tokens, cfg, desc, checkpointing, on_step):
    device = compute.device_for(cfg.device)
    model.to(device)
    for n, p in model.named_parameters():
        p.requires_grad_(in_training(n, cfg.frozen))
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trained if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    criterion = ClipLoss(local_loss=True, gather_with_grad=True, rank=compute.rank(),
                         world_size=compute.world_size())
    # eval() keeps patch dropout off, as for every other use of the backbone here; the configs
    # used have no dropout, so training mode would change nothing else.
    model.eval()
    losses, start = [], 0
    saved = checkpointing.load() if checkpointing else None
    if saved is not None and not same_shapes(saved["model"], model.state_dict()):
        saved, checkpointing.resumed = None, 0  # the full table's layout (older code): start over, not fail
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, losses = saved["step"], saved["losses"]
    network = DistributedDataParallel(model) if compute.world_size() > 1 else model
    if cfg.compile:
        network = torch.compile(network)
    plan = batch_plan(len(images), cfg.batch_size, cfg.steps, cfg.seed)[start:]
    loader = DataLoader(PlannedBatches(images, tokens, plan), batch_size=None, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda")
    steps = progress(range(start, cfg.steps), desc, total=cfg.steps, initial=start, enabled=compute.is_main())
    for step, (batch_images, batch_tokens) in zip(steps, loader):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup)
        batch_images = normalize(batch_images.to(device, non_blocking=True))
        with compute.autocast(device, cfg.precision):
            image_features, text_features, logit_scale = network(batch_images, batch_tokens.to(device))
            loss = criterion(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        losses.append(mean_over_processes(loss))
        if not math.isfinite(losses[-1]):
            raise Diverged(f"training diverged: the loss is {losses[-1]} at step {step}; lower the lr ({cfg.lr:g})")
        if on_step:
            on_step(step)
        if checkpointing and checkpointing.due(step + 1, cfg.steps) and compute.is_main():
            checkpointing.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step + 1, "losses": losses})
    return losses, start


def same_shapes(saved: dict, state: dict) -> bool:
    return saved.keys() == state.keys() and all(saved[k].shape == v.shape for k, v in state.items())


def mean_over_processes(loss: torch.Tensor) -> float:
    if compute.world_size() == 1:
        return loss.item()
    value = loss.detach().float().clone()
    dist.all_reduce(value)
    return value.item() / compute.world_size()
