"""Learning-rate schedules."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, base_lr: float, warmup: int = 0) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))
