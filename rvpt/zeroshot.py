"""Zero-shot classification: text class embeddings and batched image features."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rvpt.compute import Placement
from rvpt.images import normalize
from rvpt.progress import progress


def device_of(module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def class_embeddings(model, tokenize: Callable, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[C, D] on the model's device: the normalised mean of the normalised embeddings of every
    template, per class. The text tower runs in fp32 everywhere: it runs once per class list."""
    rows = []
    for name in classnames:
        texts = [template.format(name) for template in templates]
        embedded = F.normalize(model.encode_text(tokenize(texts).to(device_of(model))), dim=-1)
        rows.append(F.normalize(embedded.mean(dim=0), dim=-1))
    return torch.stack(rows)


class Encoder:
    """Image features of images that arrive in pieces of any size, computed in batches of exactly
    `batch_size` (so the features do not depend on how the images arrived) and kept on the CPU
    as normalised fp32: features are what is cached, never images."""

    def __init__(self, encode: Callable, batch_size: int, placement: Placement = Placement()):
        self.encode, self.batch_size, self.placement = encode, batch_size, placement
        self.pending: torch.Tensor | None = None
        self.features: list[torch.Tensor] = []

    def add(self, images: torch.Tensor) -> None:
        """Images [n, 3, H, W] in [0, 1], on any device."""
        self.pending = images if self.pending is None else torch.cat([self.pending, images])
        while len(self.pending) >= self.batch_size:
            self._run(self.pending[:self.batch_size])
            self.pending = self.pending[self.batch_size:]

    @torch.no_grad()
    def _run(self, batch: torch.Tensor) -> None:
        batch = normalize(batch.to(self.placement.device, non_blocking=True))
        with self.placement.autocast():
            features = self.encode(batch)
        self.features.append(F.normalize(features.float(), dim=-1).cpu())

    def finish(self) -> torch.Tensor:
        if self.pending is not None and len(self.pending):
            self._run(self.pending)
        self.pending = None
        return torch.cat(self.features) if self.features else torch.zeros(0)


def unit(pixels: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 pixels [N, 3, H, W] -> float in [0, 1] on `device`, as rvpt.images.to_unit_tensor
    computes it; a float batch is taken as already in [0, 1]."""
    pixels = pixels.to(device, non_blocking=True) if device is not None else pixels
    return pixels.float().div_(255) if pixels.dtype == torch.uint8 else pixels


def image_features(encode: Callable, images: torch.Tensor, batch_size: int = 512, desc: str | None = None,
                   placement: Placement = Placement()) -> torch.Tensor:
    """Runs `encode` over images (float in [0, 1] or uint8) in batches; returns normalised fp32 features."""
    encoder = Encoder(encode, batch_size, placement)
    for start in progress(range(0, len(images), batch_size), desc or "encode images"):
        encoder.add(unit(images[start:start + batch_size]))
    return encoder.finish()
