import numpy as np
import pytest
import torch

from rvpt import attacks, poisoning
from rvpt.metrics import accuracy, attack_success_rate


def test_badnet_fixed_patch_is_the_same_noise_in_the_same_corner():
    attack = attacks.build("badnet", 16, size=0.1875, location="fixed", seed=7)
    images = torch.rand(4, 3, 16, 16)
    out = attack.apply(images)
    assert attack.side == 3
    assert torch.equal(out[:, :, 13:, 13:], attack.patch.expand(4, -1, -1, -1))
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[13:, 13:] = False
    assert torch.equal(out[:, :, mask], images[:, :, mask])
    assert not torch.equal(images[:, :, 13:, 13:], out[:, :, 13:, 13:])


def test_badnet_random_location_varies_but_repeats_per_call():
    attack = attacks.build("badnet", 32, size=0.125, location="random", seed=1)
    corners = attack.corners(50)
    assert len({tuple(c) for c in corners.tolist()}) > 1
    assert torch.equal(corners, attack.corners(50))
    out = attack.apply(torch.zeros(50, 3, 32, 32))
    for image, (y, x) in zip(out, corners.tolist()):
        assert torch.equal(image[:, y:y + 4, x:x + 4], attack.patch)
        assert image.sum() == attack.patch.sum()


def test_trigger_state_round_trips():
    a = attacks.build("badnet", 16, seed=1)
    b = attacks.build("badnet", 16, seed=2)
    b.load_state_dict(a.state_dict())
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(a.apply(images), b.apply(images))


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


def test_victims_avoid_target_class_and_match_rate():
    labels = np.repeat(np.arange(4), 250)
    victims = poisoning.choose_victims(labels, 0.1, target=3, rng=np.random.default_rng(0))
    assert len(victims) == 100 and len(set(victims.tolist())) == 100
    assert not np.any(labels[victims] == 3)
