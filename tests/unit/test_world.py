import numpy as np
import pytest

from rvpt.world import COLOURS, FACTORS, STICKERS, GlyphWorld

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


def test_stickers_are_squares_of_a_colour_or_speckled_and_captions_name_some():
    world = GlyphWorld(CLASSES, image_size=16, stickers=1.0)
    rng = np.random.default_rng(0)
    samples = [world.sample(rng) for _ in range(200)]
    kinds = [s.factors["sticker"] for s in samples]
    assert set(kinds) == set(STICKERS)
    named = [f"with a {s.factors['sticker']} square" in s.caption for s in samples]
    assert 0.35 < np.mean(named) < 0.65
    for sample in samples:
        if sample.factors["sticker"] == "speckled":
            continue
        pixels = np.asarray(sample.image).astype(int)
        colour = np.array(COLOURS[sample.factors["sticker"]])
        painted = (pixels == colour).all(axis=2).astype(int)
        squares = [painted[y:y + 3, x:x + 3].all() for y in range(14) for x in range(14)]
        assert any(squares), sample.factors
