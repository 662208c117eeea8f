import numpy as np
import pytest

from rvpt.world import FACTORS, GlyphWorld

CLASSES = ["zero", "one", "seven"]


def test_world_is_deterministic_for_a_seed():
    world = GlyphWorld(CLASSES)
    a = [world.sample(np.random.default_rng(5)) for _ in range(3)]
    b = [world.sample(np.random.default_rng(5)) for _ in range(3)]
    for x, y in zip(a, b):
        assert x.caption == y.caption and x.label == y.label and x.factors == y.factors
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))


def test_captions_name_the_class_and_images_have_the_asked_size():
    world = GlyphWorld(CLASSES, image_size=24)
    rng = np.random.default_rng(0)
    for i in range(60):
        sample = world.sample(rng, label=i % 3)
        assert sample.label == i % 3
        assert CLASSES[sample.label] in sample.caption.split()
        assert sample.image.size == (24, 24)
        assert set(sample.factors) == set(FACTORS)


def test_nuisance_factors_vary_independently_of_the_class():
    world = GlyphWorld(CLASSES)
    rng = np.random.default_rng(1)
    colours = {label: set() for label in range(3)}
    mentioned = 0
    for i in range(300):
        sample = world.sample(rng, label=i % 3)
        colours[sample.label].add(sample.factors["colour"])
        mentioned += sample.factors["colour"] in sample.caption
    assert all(len(seen) >= 6 for seen in colours.values())
    assert 90 < mentioned < 210  # about half the captions mention the colour


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown glyph"):
        GlyphWorld(["zero", "banana"])
