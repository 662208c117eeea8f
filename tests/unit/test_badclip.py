"""BadCLIP's patch optimisation against a real (tiny, random) open_clip model."""
import torch
import torch.nn.functional as F

from conftest import TINY_MODEL
from rvpt import attacks, models
from rvpt.images import normalize


def test_optimised_patch_stays_an_image_and_moves_embeddings_to_the_target():
    model = models.build(TINY_MODEL, seed=0)
    encode = lambda x: model.encode_image(normalize(x))
    attack = attacks.build("badclip", 16, size=0.25, seed=0)
    images, target_images = torch.rand(64, 3, 16, 16), torch.rand(16, 3, 16, 16)
    text = torch.randn(TINY_MODEL["embed_dim"])
    before = attack.patch.clone()
    losses = attacks.optimise_patch(attack, encode, images, target_images, text,
                                    attacks.TriggerTraining(steps=40, batch_size=32, lr=0.05, images=64))
    assert not torch.equal(before, attack.patch)
    assert attack.patch.min() >= 0 and attack.patch.max() <= 1
    assert sum(losses[-5:]) < sum(losses[:5])
    with torch.no_grad():
        patched = F.normalize(encode(attack.apply(images)), dim=-1)
        random_patch = attacks.build("badclip", 16, size=0.25, seed=0)
        baseline = F.normalize(encode(random_patch.apply(images)), dim=-1)
    target = F.normalize(text, dim=0)
    assert (patched @ target).mean() > (baseline @ target).mean()
    # Only the centre square changed.
    outside = attack.apply(images).clone()
    outside[:, :, 6:10, 6:10] = images[:, :, 6:10, 6:10]
    assert torch.equal(outside, images)
