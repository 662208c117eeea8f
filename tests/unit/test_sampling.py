import numpy as np
import pytest

from rvpt.sampling import few_shot_indices, take_shots


def test_sampler_is_deterministic_balanced_and_nested():
    labels = np.repeat(np.arange(5), 40)
    a, ranks = few_shot_indices(labels, 16, seed=3)
    b, _ = few_shot_indices(labels, 16, seed=3)
    assert np.array_equal(a, b)
    assert np.array_equal(np.bincount(labels[a]), [16] * 5)
    small, _ = few_shot_indices(labels, 4, seed=3)
    assert np.array_equal(np.sort(small), np.sort(a[take_shots(ranks, 4)]))
    other, _ = few_shot_indices(labels, 16, seed=4)
    assert not np.array_equal(np.sort(a), np.sort(other))


def test_sampler_refuses_too_many_shots():
    with pytest.raises(ValueError, match="fewer than 5 shots"):
        few_shot_indices(np.repeat(np.arange(2), 4), 5, seed=0)
    with pytest.raises(ValueError, match="positive"):
        few_shot_indices(np.arange(3), 0, seed=0)
    with pytest.raises(ValueError, match="fewer than 3"):
        take_shots(np.array([0, 1, 0, 1]), 3)
