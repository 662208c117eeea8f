"""What every backdoor attack is: a trigger on images in [0, 1], and a poisoning plan."""
from __future__ import annotations

import torch


class Attack:
    """An attack owns its trigger state as tensors, so it can be saved and re-applied at test time."""

    name: str = "attack"

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Returns triggered copies of [N, 3, H, W] images in [0, 1]."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def trigger_preview(self, image_size: int) -> torch.Tensor:
        """The trigger alone on a grey image, for humans to look at."""
        return self.apply(torch.full((1, 3, image_size, image_size), 0.5))[0]
