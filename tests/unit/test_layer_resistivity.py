"""The paper's layer-wise perturbation resistivity: its perturbations, and the CLS read block by block."""
import pytest
import torch

from rvpt import models
from rvpt.defenses.base import ZeroShot
from rvpt.defenses.prompted import Prompted
from rvpt.diagnostics import LayerResistivity
from rvpt.images import normalize
from rvpt.perturbations import KINDS, Perturber, Settings
from rvpt.prompts import DeepPrompts, PromptedVisionEncoder
from conftest import TINY_MODEL

SETTINGS = dict(noise_std=0.001, blur_kernel=3, brightness=0.5, hue=0.3, seed=4)


def test_perturbations_are_small_class_preserving_and_independent_of_batching():
    images = torch.rand(20, 3, 16, 16)
    index = torch.arange(20)
    for kind in KINDS:
        whole = Perturber(Settings(**SETTINGS))(kind, images, index)
        perturber = Perturber(Settings(**SETTINGS))
        pieces = torch.cat([perturber(kind, images[i:i + 6], index[i:i + 6]) for i in range(0, 20, 6)])
        assert whole.shape == images.shape and whole.min() >= 0 and whole.max() <= 1
        assert torch.allclose(whole, pieces, atol=1e-6), kind
        assert not torch.equal(whole, images), kind
    noisy = Perturber(Settings(**SETTINGS))("noise", images, index)
    assert (noisy - images).std() == pytest.approx(0.001, rel=0.1)
    assert torch.equal(Perturber(Settings(**SETTINGS))("flip", images, index), images.flip(-1))
    jitter = Perturber(Settings(**SETTINGS))("jitter", images, index)
    assert len({round(v, 4) for v in (jitter.mean((1, 2, 3)) / images.mean((1, 2, 3))).tolist()}) > 10


def test_layer_resistivity_is_one_for_identical_tokens_and_averages_per_block():
    meter = LayerResistivity()
    tokens = torch.randn(8, 3, 5)
    meter.add(tokens, tokens)
    meter.add(tokens[:2], -tokens[:2])
    assert meter.per_block() == pytest.approx([(8 - 2) / 10] * 3)


def test_block_cls_covers_every_block_and_prompts_change_only_the_prompted_ones():
    model = models.build(TINY_MODEL, seed=0).eval()
    images = normalize(torch.rand(5, 3, 16, 16))
    plain = ZeroShot(model, None, ["{}"]).block_cls(images)
    assert plain.shape == (5, 3, 32)
    assert torch.allclose(plain[:, -1], model.visual.transformer(model.visual._embeds(images))[:, 0], atol=1e-5)
    prompts = DeepPrompts(2, 4, 32, init_std=0.5, seed=1)
    prompted = Prompted(model, None, ["{}"], PromptedVisionEncoder(model.visual, prompts, 1)).block_cls(images)
    assert prompted.shape == plain.shape
    assert torch.allclose(prompted[:, 0], plain[:, 0], atol=1e-6)     # block 0 sees no prompt
    assert not torch.allclose(prompted[:, 1:], plain[:, 1:], atol=1e-3)
