"""Deep prompts, the FR loss, every defense and CLIP training, unchanged on ViT-B/32 at 224 px:
a randomly initialised ViT-B-32-quickgelu (the paper's architecture), a few steps at batch 2."""
import copy

import pytest
import torch

from conftest import defense_settings
from rvpt import models
from rvpt.defenses.loop import DefenderData
from rvpt.defenses.registry import KINDS
from rvpt.prompts import DeepPrompts
from rvpt.train import ClipTrainConfig, train_clip
from rvpt.zeroshot import image_features

CLASSES = ["banana", "apple"]
SETTINGS = {
    "none": {},
    "prompt": {"tokens": 50, "first_block": 3, "epochs": 1, "batch_size": 2, "lr": 0.002, "alpha": 2.0},
    "linear_probe": {"epochs": 1, "batch_size": 2},
    "finetune": {"epochs": 1, "batch_size": 2, "lr": 1e-5},
    "cleanclip": {"pairs": "pairs", "budget": 2, "epochs": 1, "batch_size": 2, "lr": 1e-6},
    "coop": {"context": 4, "epochs": 1, "batch_size": 2},
}


@pytest.fixture(scope="module")
def vit_b32():
    config = models.named_config("ViT-B-32-quickgelu")
    return models.build(config, seed=0), config


def data() -> DefenderData:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 224, 224, generator=generator)
    return DefenderData(images, torch.tensor([0, 1, 0, 1]), CLASSES, images[:2].clone(),
                        ["a photo of a banana.", "an apple on a table"])


def test_trainable_fraction_for_the_papers_prompts(vit_b32):
    model, _ = vit_b32
    prompts = DeepPrompts(12 - 3, 50, 768)  # b = 50 tokens on blocks D+1..L, D = 3
    trainable, total = models.count_parameters(prompts.parameters()), models.count_parameters(model.parameters())
    assert trainable == 9 * 50 * 768 == 345_600
    assert total == 151_277_313  # open_clip's ViT-B-32: the same count as OpenAI's checkpoint
    print(f"ViT-B/32, b=50, D=3: {trainable:,} / {total:,} = {100 * trainable / total:.3f}% trainable")
    assert abs(trainable / total - 0.002285) < 1e-5  # the paper's 0.27% is not reproduced: see docs/real-data.md


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_every_defense_runs_on_vit_b32_at_224px(vit_b32, kind):
    model, config = vit_b32
    model = copy.deepcopy(model)
    module = KINDS[kind]
    defended, history = module.fit(model, data(), models.tokenizer(config), ["a photo of a {}."],
                                   defense_settings(kind, seed=0, **SETTINGS[kind]), desc=kind)
    for values in history.values():
        assert all(torch.isfinite(torch.tensor(values)))
    if kind == "prompt":
        assert history["fr"] and all(-1 <= v <= 1 for v in history["fr"])  # L_FR over the 9 prompted blocks
    features = image_features(defended.encode_image, data().images, batch_size=2)
    assert features.shape[0] == 4 and torch.isfinite(features).all()
    classifier = defended.classifier(CLASSES)
    if classifier is not None:
        assert defended.logits(features, classifier).shape == (4, 2)


def test_clip_training_step_on_vit_b32(vit_b32):
    model, config = vit_b32
    model = copy.deepcopy(model)
    tokens = models.tokenizer(config)(["a photo of a banana.", "an apple on a table"] * 2)
    before = model.visual.conv1.weight.detach().clone()
    losses, _ = train_clip(model, data().images, tokens, ClipTrainConfig(steps=2, batch_size=2, lr=1e-6, warmup=0))
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, model.visual.conv1.weight)
