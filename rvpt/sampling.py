"""Few-shot sampling: K examples per class, deterministic for a seed, nested across K."""
from __future__ import annotations

import numpy as np


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of `shots` examples of every class, and each one's rank within its class.

    Every class's pool is permuted once for the seed and the first `shots` are taken, so the
    K-shot set is the prefix (rank < K) of any larger set drawn with the same seed.
    """
    if shots <= 0:
        raise ValueError(f"shots must be positive, got {shots}")
    rng = np.random.default_rng(seed)
    indices, ranks = [], []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        if len(pool) < shots:
            raise ValueError(f"class {label} has {len(pool)} examples, fewer than {shots} shots")
        indices.append(rng.permutation(pool)[:shots])
        ranks.append(np.arange(shots))
    return np.concatenate(indices), np.concatenate(ranks).astype(np.int32)


def take_shots(ranks: np.ndarray, shots: int) -> np.ndarray:
    """Positions of the rows of a few-shot set that form its `shots`-shot prefix."""
    available = int(ranks.max()) + 1 if len(ranks) else 0
    if shots > available:
        raise ValueError(f"the few-shot set has {available} shots per class, fewer than {shots}")
    return np.flatnonzero(ranks < shots)
