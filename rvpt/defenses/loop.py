"""The few-shot training loop every defense shares: shuffled mini-batches under a cosine schedule,
resumable from a saved state, and data-parallel under torchrun."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

from rvpt import compute
from rvpt.errors import Diverged
from rvpt.resume import Checkpointing
from rvpt.schedule import warmup_cosine


@dataclass
class Schedule:
    """The optimisation settings every defense's Config shares (momentum: SGD ones only)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpointing: Checkpointing | None = None  # where a killed tuning run resumes from


@dataclass
class DefenderData:
    """What the defender holds: few-shot labelled images ([N, 3, H, W] in [0, 1]) and, for
    CleanCLIP, clean image-text pairs."""

    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]
    pair_images: torch.Tensor | None = None
    pair_captions: list[str] | None = None


def trained_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def scheduled_batches(optimizer: torch.optim.Optimizer, n: int, cfg: Schedule, desc: str, history: dict,
                      generators: tuple[torch.Generator, ...] = ()) -> Iterator[torch.Tensor]:
    """Yields index batches over cfg.epochs shuffled passes, setting the cosine-decayed lr before each.

    Under torchrun each process gets its share of every batch. With cfg.checkpointing, the
    state after every few steps (trained tensors, optimizer, `history`, and the `generators`
    the caller draws augmentations from) is saved, and a saved state of the same run is
    resumed: the batches before it are skipped, so the rest matches an uninterrupted run.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    total = cfg.epochs * max(1, -(-n // cfg.batch_size))
    resumed = resume(cfg.checkpointing, optimizer, history, generators)
    step = 0
    for _ in tqdm(range(cfg.epochs), desc=desc, disable=None if compute.is_main() else True, leave=False):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            if step >= resumed:
                if cfg.checkpointing and step > resumed and cfg.checkpointing.due(step, total) and compute.is_main():
                    cfg.checkpointing.save({"step": step, "optimizer": optimizer.state_dict(), "history": history,
                                            "tensors": [t.detach().clone() for t in trained_tensors(optimizer)],
                                            "generators": [g.get_state() for g in generators]})
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, total, cfg.lr)
                yield compute.local_part(order[start:start + cfg.batch_size])
            step += 1


def resume(checkpointing: Checkpointing | None, optimizer, history: dict, generators) -> int:
    """The step a matching saved state resumes from, after restoring it (0 when there is none)."""
    saved = checkpointing.load() if checkpointing else None
    if saved is None:
        return 0
    with torch.no_grad():
        for tensor, value in zip(trained_tensors(optimizer), saved["tensors"], strict=True):
            tensor.copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    for generator, state in zip(generators, saved["generators"], strict=True):
        generator.set_state(state)
    history.update(saved["history"])
    return saved["step"]


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss.detach()).all():  # a NaN step would only spread NaN into every trained tensor
        lr = optimizer.param_groups[0]["lr"]
        raise Diverged(f"training diverged: the loss is {loss.item()}; lower the lr (now {lr:g}) or the loss weights")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    compute.average_gradients(trained_tensors(optimizer))
    optimizer.step()
