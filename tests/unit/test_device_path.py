"""Every defense through the device path (placement, autocast, shared prefix, augmentation) on
the CPU: what a GPU run executes, minus the GPU."""
import copy

import pytest
import torch

from conftest import TINY_MODEL, defense_settings
from rvpt import models
from rvpt.compute import Placement
from rvpt.defenses.loop import DefenderData
from rvpt.defenses.registry import KINDS
from rvpt.images import normalize
from rvpt.prompts import frozen_from_prefix, shared_prefix
from rvpt.zeroshot import image_features

CLASSES = ["zero", "one", "two"]
SMALL = {"epochs": 2, "batch_size": 4}
SETTINGS = {
    "prompt": {"tokens": 2, "first_block": 2, "lr": 0.1, **SMALL},
    "linear_probe": {"lr": 0.5, **SMALL},
    "finetune": {"lr": 1e-3, **SMALL},
    "cleanclip": {"pairs": "fewshot", "budget": 9, "epochs": 2, "batch_size": 4},
    "coop": {"context": 2, "lr": 0.1, **SMALL},
}


def data() -> DefenderData:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (9, 3, 16, 16), dtype=torch.uint8, generator=generator)
    return DefenderData(pixels, torch.tensor([0, 1, 2] * 3), CLASSES)


def test_the_shared_prefix_frozen_pass_equals_an_unshared_one():
    visual = models.build(TINY_MODEL, seed=0).eval().visual
    images = normalize(torch.rand(5, 3, 16, 16))
    with torch.no_grad():
        x, unshared = visual._embeds(images), []
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if i >= 1:
                unshared.append(x[:, 0])
        shared = frozen_from_prefix(visual, shared_prefix(visual, images, 1), 1)
    assert torch.equal(shared, torch.stack(unshared, dim=1))


@pytest.mark.parametrize("kind", sorted(SETTINGS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_defense_runs_the_device_path_on_the_cpu(kind, precision):
    augment = None if kind == "cleanclip" else (0.5, 1.0)
    cfg = defense_settings(kind, **SETTINGS[kind], **({"augment": augment} if augment else {}),
                           placement=Placement(torch.device("cpu"), precision), inference_batch=4)
    model = models.build(TINY_MODEL, seed=0)
    module = KINDS[kind]
    defended, history = module.fit(model, data(), models.tokenizer(TINY_MODEL), ["a {}"], cfg, desc=kind)
    assert history["loss"] and all(torch.isfinite(torch.tensor(v)).all() for v in history.values())
    features = image_features(defended.encode_image, data().images, 4, placement=cfg.placement)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_augmented_rvpt_trains_only_the_prompts_and_sees_other_images():
    model = models.build(TINY_MODEL, seed=0)
    original = copy.deepcopy(model.state_dict())
    module = KINDS["prompt"]
    runs = {}
    for augment in (None, (0.3, 1.0)):
        cfg = defense_settings("prompt", **SETTINGS["prompt"], augment=augment)
        defended, history = module.fit(model, data(), models.tokenizer(TINY_MODEL), ["a {}"], cfg)
        runs[augment] = module.trained(defended)["prompts"].detach().clone(), history
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    (plain, plain_history), (augmented, augmented_history) = runs.values()
    assert not torch.equal(plain, augmented)
    assert plain_history["ce"][0] != augmented_history["ce"][0]  # the first batch already differs
    assert all(-1 <= v <= 1 for v in augmented_history["fr"])
