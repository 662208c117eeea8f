import math

import torch

from rvpt.losses import feature_repelling, zero_shot_logits


def test_feature_repelling_value_and_gradient_by_hand():
    # One image, one block: prompted CLS (1, 0), frozen CLS (1, 1)/sqrt(2) -> cos = 1/sqrt(2).
    prompted = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    frozen = torch.tensor([[[1.0, 1.0]]])
    loss = feature_repelling(prompted, frozen)
    assert math.isclose(loss.item(), 1 / math.sqrt(2), rel_tol=1e-6)
    loss.backward()
    # d cos / d p = f/(|p||f|) - cos * p/|p|^2 = (1,1)/sqrt(2) - (1/sqrt(2)) * (1, 0) = (0, 1/sqrt(2)).
    expected = torch.tensor([[[0.0, 1 / math.sqrt(2)]]])
    assert torch.allclose(prompted.grad, expected, atol=1e-6)


def test_feature_repelling_averages_blocks_and_batch_and_never_moves_frozen():
    prompted = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    frozen = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    loss = feature_repelling(prompted, frozen)  # cosines 1, 0, -1, 1
    assert math.isclose(loss.item(), 0.25, rel_tol=1e-6)
    loss.backward()
    assert frozen.grad is None


def test_margin_clamps_cosine_from_below():
    prompted = torch.tensor([[[-1.0, 0.0]]], requires_grad=True)
    frozen = torch.tensor([[[1.0, 0.0]]])
    loss = feature_repelling(prompted, frozen, margin=0.5)
    assert loss.item() == 0.5
    loss.backward()
    assert torch.count_nonzero(prompted.grad) == 0


def test_zero_shot_logits_scale_cosines():
    image = torch.tensor([[3.0, 4.0]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(zero_shot_logits(image, classes, 10.0), torch.tensor([[6.0, 8.0]]))


def test_the_centred_loss_gives_no_repulsion_for_a_shared_offset():
    # Prompts that shift every image's CLS by one offset: the plain loss rewards that shift (its
    # gradient on the offset is not zero), the centred variant sees nothing to repel.
    torch.manual_seed(0)
    frozen = torch.randn(8, 3, 16)
    offset = torch.randn(1, 3, 16, requires_grad=True)
    centred = feature_repelling(frozen + offset, frozen, centre=True)
    assert math.isclose(centred.item(), 1.0, rel_tol=1e-5)  # cos = 1 everywhere: nothing moved
    centred.backward()
    assert offset.grad.abs().max() < 1e-6
    offset.grad = None
    feature_repelling(frozen + offset, frozen).backward()
    assert offset.grad.abs().max() > 1e-3


def test_the_centred_loss_still_repels_each_images_own_change():
    torch.manual_seed(0)
    frozen = torch.randn(8, 2, 16)
    moved = frozen.clone()
    moved[0] = -moved[0]  # one image's own features turned around
    assert feature_repelling(moved, frozen, centre=True).item() < 0.9
