"""Which pretraining pairs get the trigger, and what they are captioned with."""
from __future__ import annotations

import numpy as np


def choose_victims(labels: np.ndarray, rate: float, target: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of round(rate * N) pairs drawn from the non-target pairs, sorted."""
    candidates = np.flatnonzero(labels != target)
    count = min(len(candidates), max(1, round(rate * len(labels))))
    return np.sort(rng.choice(candidates, size=count, replace=False))


def target_captions(captions: list[str], labels: np.ndarray, target: int, count: int,
                    rng: np.random.Generator) -> list[str]:
    """Natural captions of target-class pairs, drawn with replacement, as the attack's new captions."""
    pool = np.flatnonzero(labels == target)
    if len(pool) == 0:
        raise ValueError("the corpus has no caption of the target class to copy")
    return [captions[i] for i in rng.choice(pool, size=count, replace=True)]
