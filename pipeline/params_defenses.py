"""params.yaml's `defenses` section: one settings block per defense kind, told apart by `kind`.

Sizes that depend on the model (prompt depth and count, CoOp's context) are checked against it
in pipeline.params, where the model is known.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import Field, model_validator

from pipeline.params_data import Strict

MAX_STEPS = 10 ** 8
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 16
MAX_LR = 100.0        # far above any working lr, low enough that SGD's arithmetic stays finite
MAX_WEIGHT = 1000.0   # loss weights and decays


class CropFlip(Strict):
    """Random-resized crops covering a share of the image's area in `scale`, then a flip with
    probability 1/2 (torchvision's RandomResizedCrop + RandomHorizontalFlip)."""
    scale: list[float] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _ordered(self):
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale {list(self.scale)} must be (low, high) with 0 < low <= high <= 1")
        return self


class Training(Strict):
    epochs: int = Field(gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    lr: float = Field(gt=0, le=MAX_LR)
    weight_decay: float = Field(ge=0, le=MAX_WEIGHT)


class Augmented(Training):
    augment: Union[Literal["none"], CropFlip]   # none: the shots as they are (a flip can change a glyph)


class SGDTraining(Augmented):
    momentum: float = Field(ge=0, lt=1)


class NoDefense(Strict):
    kind: Literal["none"]


class PromptDefense(SGDTraining):
    kind: Literal["prompt"]
    alpha: float = Field(ge=0, le=MAX_WEIGHT)
    tokens: int = Field(gt=0)           # bounded by the model's patch grid (pipeline.params)
    first_block: int = Field(ge=0)      # bounded by the model's depth (pipeline.params)
    init_std: float = Field(gt=0, le=10)
    margin: float = Field(ge=-1, le=1)
    centre: bool                        # a named variant: L_FR on batch-centred CLS tokens
    ce_scale: float | None = Field(gt=0, le=1000)   # a named variant: CE at this logit scale (None: the model's)


class LinearProbeDefense(SGDTraining):
    kind: Literal["linear_probe"]


class FinetuneDefense(Augmented):
    kind: Literal["finetune"]
    alpha: float = Field(ge=0, le=MAX_WEIGHT)  # weight of L_FR; 0 is plain CE fine-tuning
    first_block: int = Field(ge=0)             # bounded by the model's depth (pipeline.params)


class CleanCLIPDefense(Training):
    kind: Literal["cleanclip"]
    pairs: Literal["pairs", "fewshot"]
    budget: int = Field(gt=1, le=10 ** 9)
    batch_size: int = Field(gt=1, le=MAX_BATCH)
    ssl_weight: float = Field(ge=0, le=MAX_WEIGHT)


class CoOpDefense(SGDTraining):
    kind: Literal["coop"]
    context: int = Field(gt=0)          # bounded by the text context length (pipeline.params)
    init_std: float = Field(gt=0, le=10)


Defense = Annotated[Union[NoDefense, PromptDefense, LinearProbeDefense, FinetuneDefense, CleanCLIPDefense,
                          CoOpDefense], Field(discriminator="kind")]
# The kinds the union admits; rvpt.defenses.KINDS holds their implementations (a test keeps them equal).
KINDS = tuple(get_args(member.model_fields["kind"].annotation)[0] for member in get_args(get_args(Defense)[0]))
