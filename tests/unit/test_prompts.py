import pytest
import torch
from conftest import TINY_MODEL

from rvpt import models
from rvpt.prompts import DeepPrompts, PromptedVisionEncoder, frozen_block_cls, load_prompts, save_prompts


@pytest.fixture
def model():
    return models.build(TINY_MODEL, seed=0)


def test_zero_prompts_equal_encode_image_exactly(model):
    images = torch.randn(5, 3, 16, 16)
    for first_block in range(3):
        encoder = PromptedVisionEncoder(model.visual, DeepPrompts(3 - first_block, 0, 32), first_block)
        with torch.no_grad():
            assert torch.equal(encoder(images), model.encode_image(images))


def test_prompts_change_features_and_get_gradients(model):
    images = torch.randn(4, 3, 16, 16)
    encoder = PromptedVisionEncoder(model.visual, DeepPrompts(2, 4, 32, init_std=1.0), 1)
    features, cls = encoder(images, return_cls=True)
    assert cls.shape == (4, 2, 32)
    assert not torch.allclose(features, model.encode_image(images))
    features.sum().backward()
    assert encoder.prompts.weight.grad.abs().sum() > 0


def test_cls_per_block_matches_frozen_encoder_without_prompts(model):
    images = torch.randn(3, 3, 16, 16)
    encoder = PromptedVisionEncoder(model.visual, DeepPrompts(2, 0, 32), 1)
    with torch.no_grad():
        _, cls = encoder(images, return_cls=True)
        assert torch.equal(cls, frozen_block_cls(model.visual, images, 1))


def test_prompt_shape_must_match_prompted_blocks(model):
    with pytest.raises(ValueError, match="prompt rows"):
        PromptedVisionEncoder(model.visual, DeepPrompts(3, 2, 32), 1)


def test_prompts_round_trip_through_safetensors(tmp_path):
    prompts = DeepPrompts(2, 5, 32, init_std=0.5, seed=3)
    save_prompts(tmp_path / "p.safetensors", prompts, 1, {"alpha": 2.0})
    loaded, first_block, meta = load_prompts(tmp_path / "p.safetensors")
    assert first_block == 1 and meta["alpha"] == "2.0"
    assert torch.equal(loaded.weight, prompts.weight)
