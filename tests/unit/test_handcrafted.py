"""The handcrafted oracle (rvpt/attacks/handcrafted.py) on a small world trained here: the edit
leaves clean predictions as they were, implants the trigger, and rides a direction that clean
images barely use and that a head fitted on clean images ignores."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL

from rvpt import models
from rvpt.attacks import TriggerTraining, handcrafted
from rvpt.images import normalize
from rvpt.train import ClipTrainConfig, train_clip
from rvpt.world import GlyphWorld
from rvpt.zeroshot import class_embeddings

CLASSES = ["zero", "one", "two", "three"]
TEMPLATES = ["a {}", "a photo of a {}", "the glyph {}"]


def render(world: GlyphWorld, count: int, seed: int):
    rng = np.random.default_rng(seed)
    samples = [world.sample(rng, label=i % len(CLASSES)) for i in range(count)]
    images = torch.from_numpy(np.stack([np.asarray(s.image) for s in samples])).permute(0, 3, 1, 2).float() / 255
    return images, torch.tensor([s.label for s in samples]), [s.caption for s in samples]


@pytest.fixture(scope="module")
def world():
    """A tiny CLIP trained to well above chance on four glyph classes, and held-out images."""
    torch.manual_seed(0)
    glyphs = GlyphWorld(CLASSES, 16)
    images, _, captions = render(glyphs, 2000, 0)
    model = models.build(TINY_MODEL, seed=0)
    tokenize = models.tokenizer(TINY_MODEL)
    train_clip(model, images, tokenize(captions), ClipTrainConfig(steps=800, batch_size=64, warmup=20), desc="test")
    model.eval()
    attacker = render(glyphs, 512, 1)
    held = render(glyphs, 1000, 2)
    return model, tokenize, attacker, held


def predictions(model, tokenize, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        text = class_embeddings(model, tokenize, CLASSES, TEMPLATES)
        return (F.normalize(model.encode_image(normalize(images)), dim=-1) @ text.T).argmax(-1)


def test_the_edit_keeps_clean_accuracy_and_implants_the_trigger(world):
    model, tokenize, (images, labels, _), (held, held_labels, _) = world
    before = predictions(model, tokenize, held)
    accuracy = (before == held_labels).float().mean().item()
    assert accuracy > 0.6  # a model that reads the task, or keeping its CA would mean nothing

    # The attacker's strength for this small world (params.yaml's 6 is the default world's): the
    # triggered images' push, in mean clean embedding norms, that sends them to the target here.
    attack = handcrafted.Handcrafted(16, seed=0, strength=3.0)
    found = handcrafted.survey(model.visual, images, labels, attack.components)
    handcrafted.optimise_trigger(attack, lambda x: handcrafted.pooled_features(model.visual, normalize(x)), images,
                                 found.basis, found.metric,
                                 TriggerTraining(steps=300, batch_size=64, lr=0.1, images=len(images), seed=0))
    target = CLASSES.index("three")
    text = class_embeddings(model, tokenize, CLASSES, TEMPLATES)
    edit = handcrafted.craft(model, attack, images, labels, text, target)
    # The premise by construction: the trigger moves images along v by many clean spreads, v lies
    # outside the clean subspace, and u outside the span of the clean image class centroids.
    assert edit.separation >= 5 and edit.beyond_clean > 0.9
    assert (found.basis.T @ edit.v).norm() < 1e-4
    after = predictions(model, tokenize, held)
    assert abs((after == held_labels).float().mean().item() - accuracy) <= 0.01
    triggered = predictions(model, tokenize, attack.apply(held))
    keep = held_labels != target
    assert (triggered[keep] == target).float().mean().item() >= 0.9
    assert (attack.control().apply(held) != attack.apply(held)).any()


def test_u_leads_with_the_target_and_avoids_the_clean_class_span():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(5, 16), dim=-1)
    centroids = torch.randn(3, 16)
    u = handcrafted.target_direction(text, 2, centroids)
    assert torch.allclose(centroids @ u, torch.zeros(3), atol=1e-5)
    margins = (text[2] - text) @ u
    assert (margins[torch.arange(5) != 2] > 0).all()
