"""The few-shot training loop every defense shares: shuffled mini-batches under a cosine schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

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


@dataclass
class DefenderData:
    """What the defender holds: few-shot labelled images ([N, 3, H, W] in [0, 1]) and, for
    CleanCLIP, clean image-text pairs."""

    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]
    pair_images: torch.Tensor | None = None
    pair_captions: list[str] | None = None


def scheduled_batches(optimizer: torch.optim.Optimizer, n: int, batch_size: int, epochs: int, lr: float,
                      seed: int, desc: str) -> Iterator[torch.Tensor]:
    """Yields index batches over `epochs` shuffled passes, setting the cosine-decayed lr before each."""
    generator = torch.Generator().manual_seed(seed)
    total = epochs * max(1, -(-n // batch_size))
    step = 0
    for _ in tqdm(range(epochs), desc=desc, disable=None, leave=False):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, lr)
            yield order[start:start + batch_size]
            step += 1


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
