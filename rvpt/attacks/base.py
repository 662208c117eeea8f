"""What every backdoor attack is: a trigger on images in [0, 1], and a poisoning plan.

An attack declares its settings once, in its constructor (typed keyword arguments with their
defaults; the constructor refuses values out of bounds), and its capabilities as class attributes:
`training` (it trains its trigger first, with a TriggerTraining, through `train`), `uses_clean_model`
(that training or its edit reads the clean model), `edits_weights` (no poisoning: `edit` makes the
backdoored model from the clean one). Adding an attack is one module, its entry in the registry
(rvpt/attacks/__init__.py) and its block in params.yaml.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from rvpt.settings import MAX_BATCH, MAX_LR, MAX_STEPS, check, runtime, setting


@dataclass(kw_only=True)
class TriggerTraining:
    """What the attacker trains before poisoning (BadCLIP's patch, ISSBA's encoder-decoder, the
    handcrafted backdoor's patch): Adam for `steps` steps on batches drawn from `images` corpus images."""

    steps: int = setting(gt=0, le=MAX_STEPS)
    batch_size: int = setting(gt=1, le=MAX_BATCH)
    lr: float = setting(gt=0, le=MAX_LR)
    images: int = setting(gt=0, le=10 ** 7, doc="corpus images the attacker draws its batches from")
    seed: int = runtime(0)

    def __post_init__(self):
        check(self)


class Attacker(Protocol):
    """What an attacker that trains its trigger can reach; the pipeline provides it."""

    seed: int
    target: int              # the target class's index among the downstream classes
    labels: np.ndarray       # the corpus's labels; its unlabelled pairs whose caption names the target count as it

    def clean_model(self):
        """The clean CLIP, of the victim's kind."""

    def images(self, rows: np.ndarray) -> torch.Tensor:
        """The corpus images at `rows` (sorted), float [N, 3, H, W] in [0, 1]."""

    def captions(self, rows: np.ndarray) -> list[str]: ...

    def tokenize(self, texts: list[str]) -> torch.Tensor: ...

    def sample(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` random corpus images (drawn from the seed) and their downstream class indices
        (-1 where an image shows no downstream class)."""

    def class_text(self, model) -> torch.Tensor:
        """The downstream classes' text embeddings [C, D] on `model`, with the victim's templates."""


class Attack:
    """An attack owns its trigger state as tensors, so it can be saved and re-applied at test time.

    Class attributes describe the plan beyond the image trigger: `label_consistent` attacks put
    the trigger on target-class pairs and keep their captions; `text_trigger` is a word prefixed to
    poisoned captions and, at test time, to every class prompt; `edits_weights` attacks poison
    nothing and edit the clean model instead.
    """

    name: str = ""  # a class that sets its own name is an attack of that kind
    label_consistent: bool = False
    text_trigger: str = ""
    #: True for an attack that trains its trigger first (`train`, with a TriggerTraining).
    training: bool = False
    #: True when that training, or the edit, reads the clean model.
    uses_clean_model: bool = False
    #: True for an attack that edits the clean model's weights instead of poisoning its corpus.
    edits_weights: bool = False

    def train(self, attacker: Attacker, cfg: TriggerTraining) -> list[float]:
        """Trains the trigger in place on what the attacker reaches; the loss at every step."""
        raise NotImplementedError

    def edit(self, model, attacker: Attacker, cfg: TriggerTraining | None):
        """Backdoors the clean `model` in place; what the edit measured (an object with `report()`
        -> figures and `tensors()` -> what to keep beside the model)."""
        raise NotImplementedError

    def quality(self, images: torch.Tensor) -> dict[str, float]:
        """Figures of the trigger on clean images beyond its visibility (ISSBA: how well its decoder
        reads the secret back)."""
        return {}

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
