"""What every backdoor attack is: a trigger on images in [0, 1], and a poisoning plan."""
from __future__ import annotations

import torch


class Attack:
    """An attack owns its trigger state as tensors, so it can be saved and re-applied at test time.

    Two class attributes describe the poisoning plan beyond the image trigger:
    `label_consistent` attacks put the trigger on target-class pairs and keep their captions;
    `text_trigger` is a word prefixed to poisoned captions and, at test time, to every class prompt.
    """

    name: str = "attack"
    label_consistent: bool = False
    text_trigger: str = ""

    def apply(self, images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Returns triggered copies of [N, 3, H, W] images in [0, 1].

        `index` holds each image's position in its split (default 0..N-1). A trigger that
        differs per image depends on that position alone, so a split triggered batch by batch
        gets the same images as the split triggered whole.
        """
        raise NotImplementedError

    def to(self, device: torch.device) -> "Attack":
        """Moves the trigger state, so that triggers are applied where the batch already is."""
        for key, tensor in self.state_dict().items():
            setattr(self, key, tensor.to(device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.check_state(state)
        for key in self.state_dict():
            setattr(self, key, state[key].float())

    def check_state(self, state: dict[str, torch.Tensor]) -> None:
        """Refuses a saved trigger that lacks one of this attack's tensors or has another shape."""
        for key, tensor in self.state_dict().items():
            if key not in state:
                raise ValueError(f"trigger state lacks {key!r}")
            if state[key].shape != tensor.shape:
                raise ValueError(f"trigger {key} shape {tuple(state[key].shape)} != {tuple(tensor.shape)}")

    def trigger_preview(self, image_size: int) -> torch.Tensor:
        """The trigger alone on a grey image, for humans to look at."""
        return self.apply(torch.full((1, 3, image_size, image_size), 0.5))[0]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
