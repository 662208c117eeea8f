"""Zero-shot classification: text class embeddings and batched image features."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rvpt.images import normalize


@torch.no_grad()
def class_embeddings(model, tokenize: Callable, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[C, D]: the normalised mean of the normalised embeddings of every template, per class."""
    rows = []
    for name in classnames:
        texts = [template.format(name) for template in templates]
        embedded = F.normalize(model.encode_text(tokenize(texts)), dim=-1)
        rows.append(F.normalize(embedded.mean(dim=0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def image_features(encode: Callable, images: torch.Tensor, batch_size: int = 512,
                   desc: str | None = None) -> torch.Tensor:
    """Runs `encode` over [N, 3, H, W] images in [0, 1] in batches; returns normalised features."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=None, leave=False):
        out.append(F.normalize(encode(normalize(images[start:start + batch_size])), dim=-1))
    return torch.cat(out)
