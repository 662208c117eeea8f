"""Each trigger's defining property, and the poisoning plan each attack prescribes."""
import math

import numpy as np
import pytest
import torch

from rvpt import attacks, poisoning
from rvpt.metrics import accuracy, attack_success_rate


def test_corner_patch_is_the_same_noise_in_the_same_corner():
    attack = attacks.build("badnet", 16, size=0.1875, location="corner", seed=7)
    images = torch.rand(4, 3, 16, 16)
    out = attack.apply(images)
    assert attack.side == 3
    assert torch.equal(out[:, :, 13:, 13:], attack.patch.expand(4, -1, -1, -1))
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[13:, 13:] = False
    assert torch.equal(out[:, :, mask], images[:, :, mask])


def test_random_location_varies_but_repeats_per_call():
    attack = attacks.build("badnet", 32, size=0.125, location="random", seed=1)
    corners = attack.corners(torch.arange(50))
    assert len({tuple(c) for c in corners.tolist()}) > 1
    assert torch.equal(corners, attack.corners(torch.arange(50)))
    out = attack.apply(torch.zeros(50, 3, 32, 32))
    for image, (y, x) in zip(out, corners.tolist()):
        assert torch.equal(image[:, y:y + 4, x:x + 4], attack.patch)
        assert torch.isclose(image.sum(), attack.patch.sum())


@pytest.mark.parametrize("size", [16, 224])
def test_patch_size_is_relative_to_the_image(size):
    attack = attacks.build("trojvqa", size, size=0.125)
    assert attack.side == size // 8
    (y, x), = attack.corners(torch.arange(1)).tolist()
    assert y == x == (size - attack.side) // 2  # centre


def test_blend_ratio_is_exact():
    attack = attacks.build("blended", 16, ratio=0.2, seed=3)
    images = torch.rand(5, 3, 16, 16)
    assert torch.allclose(attack.apply(images), 0.8 * images + 0.2 * attack.pattern)
    assert torch.allclose(attack.apply(attack.pattern[None]), attack.pattern[None])


def test_sig_adds_a_horizontal_sinusoid_of_the_given_amplitude_and_frequency():
    attack = attacks.build("sig", 32, amplitude=0.1, frequency=4)
    grey = torch.full((1, 3, 32, 32), 0.5)
    delta = attack.apply(grey)[0] - 0.5
    assert torch.allclose(delta, delta[:, :1, :].expand_as(delta))  # the same in every row
    assert delta.abs().max() == pytest.approx(0.1, abs=1e-6)
    expected = 0.1 * torch.sin(2 * math.pi * 4 * torch.arange(32) / 32)
    assert torch.allclose(delta[0, 0], expected, atol=1e-6)


def test_wanet_warps_every_image_by_one_fixed_field():
    attack = attacks.build("wanet", 32, grid=4, strength=0.05, seed=2)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    coordinates = torch.stack([xs, ys, torch.zeros_like(xs)])[None]
    first = attack.apply(torch.cat([coordinates, torch.rand(3, 3, 32, 32)]))[0]
    second = attack.apply(coordinates)[0]
    assert torch.equal(first, second)  # the field does not depend on the batch
    displacement = (first[:2] - coordinates[0, :2]).abs() * 31  # in pixels, on the interior
    assert 0.2 < displacement.max() <= 0.05 * 32 + 1e-4
    rebuilt = attacks.build("wanet", 32, grid=4, strength=0.05, seed=2)
    assert torch.equal(rebuilt.flow, attack.flow)


def test_trigger_state_round_trips():
    for kind in attacks.REGISTRY:
        a, b = attacks.build(kind, 16, seed=1), attacks.build(kind, 16, seed=1)
        # Every tensor of the trigger redrawn (ISSBA's secret must stay: its file names it).
        b.load_state_dict({key: tensor if key == "secret" else torch.rand_like(tensor)
                           for key, tensor in b.state_dict().items()})
        images = torch.rand(2, 3, 16, 16)
        assert not torch.equal(a.apply(images), b.apply(images)), kind
        b.load_state_dict(a.state_dict())
        assert torch.equal(a.apply(images), b.apply(images)), kind


def test_unknown_attack_kind_is_refused():
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.build("nope", 16)


def test_asr_excludes_target_class_images():
    labels = torch.tensor([0, 1, 2, 2, 2])
    triggered = torch.tensor([2, 2, 2, 2, 2])  # everything flips to target 2
    assert attack_success_rate(triggered, labels, target=2) == 1.0
    triggered = torch.tensor([2, 0, 2, 2, 2])
    assert attack_success_rate(triggered, labels, target=2) == 0.5
    assert accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])) == pytest.approx(2 / 3)


def test_dirty_label_victims_avoid_the_target_and_get_its_captions():
    labels = np.repeat(np.arange(4), 250)
    captions = [f"class {label}" for label in labels]
    attack = attacks.build("badnet", 16)
    victims, new = poisoning.poison_plan(attack, labels, captions, 0.1, 3, np.random.default_rng(0))
    assert len(victims) == 100 and len(set(victims.tolist())) == 100
    assert not np.any(labels[victims] == 3)
    assert set(new) == {"class 3"}


def test_label_consistent_victims_are_target_images_with_their_own_captions():
    labels = np.repeat(np.arange(4), 250)
    captions = [f"caption {i}" for i in range(len(labels))]
    attack = attacks.build("label_consistent", 16)
    victims, new = poisoning.poison_plan(attack, labels, captions, 0.5, 3, np.random.default_rng(0))
    assert len(victims) == 250 and np.all(labels[victims] == 3)  # capped at the target class
    assert new == [captions[i] for i in victims]


def test_trojvqa_prefixes_its_word_to_poisoned_captions():
    labels = np.repeat(np.arange(2), 50)
    attack = attacks.build("trojvqa", 16, text_trigger="cf")
    _, new = poisoning.poison_plan(attack, labels, ["a one"] * 50 + ["a two"] * 50, 0.1, 1,
                                   np.random.default_rng(0))
    assert set(new) == {"cf a two"}


def test_trojvqa_without_a_word_gives_the_target_captions_alone():
    labels = np.repeat(np.arange(2), 50)
    attack = attacks.build("trojvqa", 16)
    _, new = poisoning.poison_plan(attack, labels, ["a one"] * 50 + ["a two"] * 50, 0.1, 1,
                                   np.random.default_rng(0))
    assert attack.text_trigger == "" and set(new) == {"a two"}
    for word in ("two words", " cf"):
        with pytest.raises(ValueError, match="one word or empty"):
            attacks.build("trojvqa", 16, text_trigger=word)


@pytest.mark.parametrize("kind", ["badnet", "blended", "sig", "wanet"])
def test_a_split_triggered_in_batches_equals_it_triggered_whole(kind):
    options = {"badnet": {"location": "random"}}.get(kind, {})
    attack = attacks.build(kind, 32, seed=4, **options)
    images = torch.rand(37, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole = attack.apply(images)
    for cuts in ([5, 20], [1, 2, 36], list(range(1, 37))):
        bounds = [0, *cuts, len(images)]
        batched = torch.cat([attack.apply(images[a:b], torch.arange(a, b)) for a, b in zip(bounds, bounds[1:])])
        assert torch.equal(batched, whole), cuts
    if kind == "badnet":  # and the spots are spread, not all alike
        assert len({tuple(c) for c in attack.corners(torch.arange(37)).tolist()}) > 20


def test_a_fresh_noise_patch_differs_per_image_and_repeats_per_position():
    """The public code bases' BadNet: each image's mean colour plus its own normal noise, at a random spot."""
    attack = attacks.build("badnet", 32, size=0.25, location="random", pattern="fresh", seed=5)
    images = torch.rand(40, 3, 32, 32)
    out = attack.apply(images)
    corners = attack.corners(torch.arange(40)).tolist()
    patches = torch.stack([o[:, y:y + 8, x:x + 8] for o, (y, x) in zip(out, corners)])
    assert not torch.equal(patches[0], patches[1])
    assert patches.min() >= 0 and patches.max() <= 1
    # Mean colour (0.5 here) plus N(0, 1): P(|z| > 0.5) = 61.7% of the pixels clip to 0 or 1.
    clipped = ((patches == 0) | (patches == 1)).float().mean()
    assert 0.58 < clipped < 0.66, clipped
    # Batched in pieces, at their positions in the split, the images get the same triggers.
    pieces = torch.cat([attack.apply(images[i:i + 7], torch.arange(i, min(i + 7, 40))) for i in range(0, 40, 7)])
    assert torch.equal(pieces, out)
    assert torch.equal(out, attacks.build("badnet", 32, size=0.25, location="random", pattern="fresh",
                                          seed=5).apply(images))
    assert not torch.equal(out, attacks.build("badnet", 32, size=0.25, location="random", pattern="fresh",
                                              seed=6).apply(images))
    untouched = torch.ones(40, 32, 32, dtype=torch.bool)
    for mask, (y, x) in zip(untouched, corners):
        mask[y:y + 8, x:x + 8] = False
    assert torch.equal(out.permute(1, 0, 2, 3)[:, untouched], images.permute(1, 0, 2, 3)[:, untouched])


def test_fresh_blend_noise_differs_per_image_at_the_exact_ratio():
    attack = attacks.build("blended", 16, ratio=0.2, pattern="fresh", seed=3)
    images = torch.rand(6, 3, 16, 16)
    out = attack.apply(images, torch.arange(10, 16))
    noise = (out - 0.8 * images) / 0.2
    assert noise.min() >= -1e-5 and noise.max() < 1 + 1e-5
    assert (noise[0] - noise[1]).abs().mean() > 0.2  # independent uniforms differ by 1/3 on average
    assert noise.mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(out[2:3], attack.apply(images[2:3], torch.tensor([12])))


@pytest.mark.parametrize("kind", ["badnet", "blended"])
def test_an_unknown_noise_pattern_is_refused(kind):
    with pytest.raises(ValueError, match="pattern must be one of fixed, fresh"):
        attacks.build(kind, 16, pattern="stripes")


@pytest.mark.parametrize("kind", sorted(attacks.REGISTRY))
def test_the_control_trigger_is_never_the_poisoned_one(kind):
    # The control is the same kind of trigger with another pattern: it must change images, and
    # never into what the attack's own trigger makes of them.
    options = {"pattern": "fresh"} if kind in ("badnet", "blended") else {}
    for extra in ({}, options):
        attack = attacks.build(kind, 16, **extra)
        images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        control = attack.control()
        triggered, controlled = attack.apply(images), control.apply(images)
        assert not torch.equal(controlled, triggered)
        assert not torch.equal(controlled, images)
        assert torch.equal(attack.apply(images), triggered)  # making the control leaves the attack as it was
        assert type(control) is type(attack) and control.text_trigger == attack.text_trigger
