"""ISSBA's trigger: invisible, sample-specific, deterministic for a seed, and saved exactly."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
import yaml

from conftest import REPO
from rvpt import attacks
from rvpt.attacks.issba import secret_bits
from rvpt.world import GlyphWorld


@pytest.fixture(scope="module")
def glyphs():
    world, rng = GlyphWorld(["zero", "one", "two", "three", "ay", "bee"], 16), np.random.default_rng(0)
    return torch.stack([TF.to_tensor(world.sample(rng).image) for _ in range(96)])


# The default params' amplitude, so that the invisibility checked is the default trigger's.
AMPLITUDE = yaml.safe_load((REPO / "params.yaml").read_text())["attacks"]["issba"]["options"]["amplitude"]


def trained(images, seed=0, steps=60):
    attack = attacks.build("issba", 16, secret="Stega!!", amplitude=AMPLITUDE, width=16, seed=seed)
    losses = attacks.train_stega(attack, images, attacks.TriggerTraining(steps=steps, batch_size=32, lr=0.003, images=len(images),
                                                                      seed=seed))
    return attack, losses


def psnr(a, b):
    return -10 * torch.log10(((a - b) ** 2).flatten(1).mean(1))


def test_the_secret_is_the_public_codes_string_as_bits():
    assert secret_bits("S").tolist() == [0, 1, 0, 1, 0, 0, 1, 1]
    assert len(secret_bits("Stega!!")) == 56


def test_trigger_is_invisible_and_sample_specific(glyphs):
    attack, losses = trained(glyphs)
    out = attack.apply(glyphs)
    assert out.min() >= 0 and out.max() <= 1
    assert psnr(out, glyphs).min() > 27
    residual = out - glyphs
    assert (residual[0] - residual[1]).abs().mean() > 1e-3   # two images, two different residuals
    assert len({tuple(r.flatten()[:32].tolist()) for r in residual}) == len(glyphs)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])       # the encoder-decoder learned something


def test_trigger_is_deterministic_for_a_seed_and_differs_across_seeds(glyphs):
    first, _ = trained(glyphs, seed=1, steps=10)
    again, _ = trained(glyphs, seed=1, steps=10)
    other, _ = trained(glyphs, seed=2, steps=10)
    assert torch.equal(first.apply(glyphs), again.apply(glyphs))
    assert not torch.equal(first.apply(glyphs), other.apply(glyphs))


def test_batching_does_not_change_the_trigger(glyphs):
    attack, _ = trained(glyphs, steps=5)
    whole = attack.apply(glyphs)
    pieces = torch.cat([attack.apply(glyphs[i:i + 7], torch.arange(i, min(i + 7, 96))) for i in range(0, 96, 7)])
    assert torch.allclose(whole, pieces, atol=1e-6)


def test_state_round_trips_and_refuses_another_secret(glyphs):
    attack, _ = trained(glyphs, steps=5)
    state = {k: v.clone() for k, v in attack.state_dict().items()}
    fresh = attacks.build("issba", 16, secret="Stega!!", amplitude=AMPLITUDE, width=16, seed=9)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.apply(glyphs), attack.apply(glyphs))
    assert attacks.bit_accuracy(fresh, glyphs) == attacks.bit_accuracy(attack, glyphs)
    with pytest.raises(ValueError, match="another secret"):
        attacks.build("issba", 16, secret="Stegb!!", amplitude=0.03, width=16).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        attacks.build("issba", 16, secret="Stega!!", amplitude=0.03, width=8).load_state_dict(state)


@pytest.mark.parametrize("options, culprit", [({"amplitude": 0.0}, "amplitude"), ({"amplitude": 0.6}, "amplitude"),
                                              ({"secret": ""}, "secret"), ({"width": 0}, "width")])
def test_bad_options_are_refused(options, culprit):
    with pytest.raises(ValueError, match=culprit):
        attacks.build("issba", 16, **options)
