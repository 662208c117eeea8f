"""What every backdoor attack is: a trigger on images in [0, 1], and a poisoning plan."""
from __future__ import annotations

import copy

import numpy as np
import torch


class Attack:
    """An attack owns its trigger state as tensors, so it can be saved and re-applied at test time.

    Class attributes describe the plan beyond the image trigger: `label_consistent` attacks put
    the trigger on target-class pairs and keep their captions; `text_trigger` is a word prefixed to
    poisoned captions and, at test time, to every class prompt; `edits_weights` attacks poison
    nothing and edit the clean model instead.
    """

    name: str = "attack"
    label_consistent: bool = False
    text_trigger: str = ""
    #: True for an attack that edits the clean model's weights instead of poisoning its corpus.
    edits_weights: bool = False

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

    def control(self) -> "Attack":
        """The same kind of trigger with a pattern the model never saw (`mirror` says which). Its
        ASR, read beside the trigger's, tells a backdoor from a model's bias towards the target."""
        twin = copy.deepcopy(self)
        twin.mirror()
        return twin

    def mirror(self) -> None:
        """Turns this trigger into its control, in place."""
        raise NotImplementedError

    def trigger_preview(self, image_size: int) -> torch.Tensor:
        """The trigger alone on a grey image, for humans to look at."""
        return self.apply(torch.full((1, 3, image_size, image_size), 0.5))[0]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


PATTERNS = ("fixed", "fresh")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def check_pattern(pattern: str) -> str:
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    return pattern


def splitmix64(values):
    """A well-spread 64-bit hash of each unsigned value (Steele et al.'s SplitMix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = np.asarray(values, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def image_keys(seed: int, index: torch.Tensor) -> np.ndarray:
    """One 64-bit key per image, a hash of the seed and the image's position in its split."""
    return splitmix64(splitmix64(np.uint64(seed)) ^ index.cpu().numpy().astype(np.uint64))


def key_uniform(keys: np.ndarray) -> torch.Tensor:
    """64-bit keys -> uniforms in [0, 1), from their top 53 bits (every value exact in float64)."""
    return torch.from_numpy((keys >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).float()


def image_uniform(seed: int, index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """[len(index), *shape] uniforms in [0, 1): noise drawn afresh for every image, yet a pure
    function of the seed and the image's position, so any batching triggers an image the same way."""
    count = int(np.prod(shape))
    with np.errstate(over="ignore"):
        streams = image_keys(seed, index)[:, None] + np.arange(count, dtype=np.uint64) * _GOLDEN
    return key_uniform(splitmix64(streams)).view(len(index), *shape)


def image_normal(seed: int, index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise per image (Box-Muller over image_uniform's stream)."""
    u = image_uniform(seed, index, (2, *shape))
    return torch.sqrt(-2 * torch.log1p(-u[:, 0])) * torch.cos(2 * torch.pi * u[:, 1])
