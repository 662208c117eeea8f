"""The measurements the paper argues with, as numbers per model.

Perturbation resistivity: how little a small random perturbation moves the image embedding.
Nuisance probe: how well a linear probe reads the class-irrelevant factors from the embedding.
Offset share: how much of what prompts change in the CLS token is one offset shared by every image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PixelNoise:
    """Seeded Gaussian pixel noise of `std` (in [0, 1] units) for a split's images in order, batch
    by batch; the noise an image gets does not depend on how the split is batched."""

    def __init__(self, std: float, seed: int):
        self.std = std
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The next images of the split plus their noise, clipped to [0, 1]."""
        shape = images.shape[1:]
        # torch draws normals in blocks of 16: when an image's values fill whole blocks, one
        # draw for the batch equals a draw per image; otherwise each image is drawn alone.
        if shape.numel() % 16 == 0:
            noise = torch.randn(images.shape, generator=self.generator)
        else:
            noise = torch.stack([torch.randn(shape, generator=self.generator) for _ in range(len(images))])
        return (images + self.std * noise.to(images.device)).clamp(0, 1)


def perturb(images: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """Images plus seeded Gaussian pixel noise of `std`, clipped: PixelNoise over one batch."""
    return PixelNoise(std, seed)(images)


def resistivity(clean: torch.Tensor, perturbed: torch.Tensor) -> float:
    """Mean cosine similarity between the embeddings of the clean and the perturbed images."""
    return F.cosine_similarity(clean, perturbed, dim=-1).mean().item()


class LayerResistivity:
    """Mean cosine, block by block, between the CLS tokens of clean images and of their perturbed
    copies: the paper's layer-wise perturbation resistivity, accumulated batch by batch."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, clean_cls: torch.Tensor, perturbed_cls: torch.Tensor) -> None:
        """Both [N, blocks, width]."""
        cosine = F.cosine_similarity(clean_cls.float(), perturbed_cls.float(), dim=-1).sum(0).cpu()
        self.total = cosine if self.total is None else self.total + cosine
        self.count += len(clean_cls)

    def per_block(self) -> list[float]:
        return [] if self.total is None else (self.total / self.count).tolist()


class OffsetShare:
    """Per block, the share of sum ||moved - frozen||^2 over images that one offset shared by every
    image (their mean change) explains: 1 when every image's CLS moves the same way, 0 when the
    changes cancel on average. Measures whether prompts edit each image's features or shift all
    of them alike; accumulated batch by batch."""

    def __init__(self):
        self.total: torch.Tensor | None = None   # [blocks, width]: the summed change
        self.energy: torch.Tensor | None = None  # [blocks]: the summed squared change
        self.count = 0

    def add(self, moved_cls: torch.Tensor, frozen_cls: torch.Tensor) -> None:
        """Both [N, blocks, width]."""
        change = (moved_cls.float() - frozen_cls.float()).cpu()
        total, energy = change.sum(0), change.pow(2).sum((0, 2))
        self.total = total if self.total is None else self.total + total
        self.energy = energy if self.energy is None else self.energy + energy
        self.count += len(change)

    def per_block(self) -> list[float | None]:
        """None for a block nothing moved (an unprompted one)."""
        if self.total is None:
            return []
        shared = self.total.pow(2).sum(-1) / self.count
        return [None if energy == 0 else float(part / energy) for part, energy in zip(shared, self.energy)]


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-4) -> float:
    """Test accuracy of a multinomial logistic regression fitted full-batch on (train_x, train_y).

    Features are standardised with the training statistics, so the probe reads the information
    in the features, not their scale, and the same settings suit every model.
    """
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    head = torch.nn.Linear(train_x.shape[1], classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(head(train_x), train_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (head(test_x).argmax(-1) == test_y).float().mean().item()
