"""A corpus decoded batch by batch (by DataLoader workers) trains exactly as one decoded up front."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import TINY_MODEL
from rvpt import models
from rvpt.images import LazyImages, decode_many, encode_png, to_unit_tensor
from rvpt.train import ClipTrainConfig, train_clip
from rvpt.world import GlyphWorld


@pytest.mark.parametrize("workers", [0, 2])
def test_lazy_images_train_like_preloaded_ones(workers):
    world = GlyphWorld(["zero", "one", "two"], image_size=16)
    rng = np.random.default_rng(0)
    samples = [world.sample(rng) for _ in range(48)]
    blobs = pa.array([encode_png(s.image) for s in samples], pa.binary())
    tokens = models.tokenizer(TINY_MODEL)([s.caption for s in samples])
    config = ClipTrainConfig(steps=6, batch_size=16, warmup=1, workers=workers)

    preloaded = to_unit_tensor(decode_many(blobs.to_pylist(), 16, "corpus").pixels)
    lazy = LazyImages(blobs, 16, "corpus")
    assert torch.equal(lazy[torch.tensor([3, 0, 7])], preloaded[[3, 0, 7]])
    first, second = models.build(TINY_MODEL, seed=0), models.build(TINY_MODEL, seed=0)
    losses_preloaded, _ = train_clip(first, preloaded, tokens, config)
    losses_lazy, _ = train_clip(second, lazy, tokens, config)
    assert losses_preloaded == losses_lazy
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
