"""The few-shot training loop every defense shares, in small pieces: the batch plan, the lr
schedule, the training state a killed run resumes from, each process's shard of a batch, the
(augmented) images of a batch on the device, and the step itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from rvpt import compute
from rvpt.compute import Placement
from rvpt.defenses.augment import crop_and_flip
from rvpt.errors import Diverged
from rvpt.images import normalize
from rvpt.resume import Checkpointing
from rvpt.schedule import warmup_cosine
from rvpt.settings import MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_WEIGHT, check, runtime, setting
from rvpt.zeroshot import image_features, unit
from rvpt.progress import progress


@dataclass(kw_only=True)
class Schedule:
    """The optimisation settings every defense's Config shares; params.yaml gives their values."""

    epochs: int = setting(gt=0, le=MAX_EPOCHS, doc="passes over the defender's data")
    batch_size: int = setting(gt=0, le=MAX_BATCH)
    lr: float = setting(gt=0, le=MAX_LR, doc="peak learning rate of the cosine schedule")
    weight_decay: float = setting(ge=0, le=MAX_WEIGHT)
    seed: int = runtime(0)
    placement: Placement = runtime(default_factory=Placement)
    inference_batch: int = runtime(512)                   # images per frozen forward pass (no gradients)
    checkpointing: Checkpointing | None = runtime(None)   # where a killed tuning run resumes from

    def __post_init__(self):
        check(self)


@dataclass(kw_only=True)
class Augmented(Schedule):
    """A schedule over the shots' images, as they are (augment None) or as random-resized crops
    covering an (low, high) share of the image's area, each followed by a flip with probability 1/2."""

    augment: tuple[float, float] | None = setting(None, doc="null, or the [low, high] area range of random-resized "
                                                      "crops + flips (a flip can turn one glyph into another)")

    def __post_init__(self):
        super().__post_init__()
        if self.augment is not None and not 0 < self.augment[0] <= self.augment[1] <= 1:
            raise ValueError(f"augment: {list(self.augment)} must be the [low, high] share of the image's area a "
                             f"crop covers, 0 < low <= high <= 1")


@dataclass(kw_only=True)
class SGDSchedule(Augmented):
    momentum: float = setting(ge=0, lt=1)


def adapt(settings: dict, shape) -> dict:
    """A defense trained on the shots: its batch no larger than the shots (`rvpt profile imagefolder`)."""
    return {**settings, "batch_size": min(settings["batch_size"], shape.shots)}


@dataclass
class DefenderData:
    """What the defender holds: few-shot labelled images ([N, 3, H, W], uint8 or float in [0, 1])
    and, for CleanCLIP, clean image-text pairs."""

    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]
    pair_images: torch.Tensor | None = None
    pair_captions: list[str] | None = None


def batch_plan(n: int, cfg: Schedule) -> list[torch.Tensor]:
    """The index batches of cfg.epochs shuffled passes over n examples, a function of cfg.seed."""
    generator = torch.Generator().manual_seed(cfg.seed)
    return [order[start:start + cfg.batch_size] for _ in range(cfg.epochs)
            for order in [torch.randperm(n, generator=generator)] for start in range(0, n, cfg.batch_size)]


def trained_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class TrainingState:
    """What a resumed run needs: trained tensors, optimizer, history, and the generators the
    caller draws augmentations from."""

    def __init__(self, checkpointing: Checkpointing | None, optimizer, history: dict, generators=()):
        self.checkpointing, self.optimizer, self.history, self.generators = \
            checkpointing, optimizer, history, generators

    def save_if_due(self, step: int, total: int) -> None:
        if self.checkpointing and self.checkpointing.due(step, total) and compute.is_main():
            self.checkpointing.save({
                "step": step, "optimizer": self.optimizer.state_dict(), "history": self.history,
                "tensors": [t.detach().cpu().clone() for t in trained_tensors(self.optimizer)],
                "generators": [g.get_state() for g in self.generators]})

    def restore(self) -> int:
        """The step a matching saved state resumes from, after restoring it (0 when there is none)."""
        saved = self.checkpointing.load() if self.checkpointing else None
        if saved is None:
            return 0
        if not same_layout(saved, trained_tensors(self.optimizer), self.generators):
            self.checkpointing.resumed = 0  # a state of another layout (older code): start over, not fail
            return 0
        with torch.no_grad():
            for tensor, value in zip(trained_tensors(self.optimizer), saved["tensors"], strict=True):
                tensor.copy_(value)
        self.optimizer.load_state_dict(saved["optimizer"])
        for generator, state in zip(self.generators, saved["generators"], strict=True):
            generator.set_state(state)
        self.history.update(saved["history"])
        return saved["step"]


def same_layout(saved: dict, tensors: list[torch.Tensor], generators) -> bool:
    return len(saved["tensors"]) == len(tensors) and len(saved["generators"]) == len(generators) and \
        all(a.shape == b.shape for a, b in zip(saved["tensors"], tensors))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def schedule(n: int, cfg: Schedule) -> list[tuple[float, tuple[torch.Tensor, float]]]:
    """Each step's cosine-decayed lr and this process's (rows, share of the batch)."""
    plan = batch_plan(n, cfg)
    return [(warmup_cosine(step, len(plan), cfg.lr), compute.shard(batch)) for step, batch in enumerate(plan)]


def steps(optimizer: torch.optim.Optimizer, n: int, cfg: Schedule, desc: str, history: dict,
          generators: tuple[torch.Generator, ...] = ()) -> Iterator[tuple[torch.Tensor, float]]:
    """Yields each step's (this process's rows, their share of the batch) after setting the
    step's lr (`schedule`). With cfg.checkpointing the state is saved every few steps, and a
    saved state of the same run is resumed: the rest then matches an uninterrupted run."""
    planned = schedule(n, cfg)
    state = TrainingState(cfg.checkpointing, optimizer, history, generators)
    start = state.restore()
    for step in progress(range(start, len(planned)), desc, total=len(planned), initial=start,
                         enabled=compute.is_main()):
        if step > start:
            state.save_if_due(step, len(planned))
        lr, shard = planned[step]
        set_lr(optimizer, lr)
        yield shard


def batch_images(data: DefenderData, rows: torch.Tensor, cfg: Augmented,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The rows' images on the device as float in [0, 1], augmented when cfg.augment says so."""
    images = unit(data.images[rows], cfg.placement.device)
    return crop_and_flip(images, generator, cfg.augment) if cfg.augment else images


class FrozenFeatures:
    """Normalised fp32 features of a frozen image encoder for a step's rows, on the device: computed
    once for every shot without augmentation, and per step on the augmented batch with it."""

    def __init__(self, model, data: DefenderData, cfg: Augmented):
        self.model, self.data, self.cfg = model, data, cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.cached = None if cfg.augment else image_features(model.encode_image, data.images, cfg.inference_batch,
                                                                placement=cfg.placement)

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[rows].to(self.cfg.placement.device)
        images = normalize(batch_images(self.data, rows, self.cfg, self.generator))
        with self.cfg.placement.autocast():
            features = self.model.encode_image(images)
        return F.normalize(features.float(), dim=-1)


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, share: float = 1.0) -> None:
    """One optimizer step on `loss`, this process's mean over its `share` of the global batch."""
    if not torch.isfinite(loss.detach()).all():  # a NaN step would only spread NaN into every trained tensor
        lr = optimizer.param_groups[0]["lr"]
        raise Diverged(f"training diverged: the loss is {loss.item()}; lower the lr (now {lr:g}) or the loss weights")
    optimizer.zero_grad(set_to_none=True)
    (loss if compute.world_size() == 1 else loss * share).backward()
    compute.sum_gradients(trained_tensors(optimizer))
    optimizer.step()
