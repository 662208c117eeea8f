"""No defense: the backdoored model scored zero-shot, the row every defense is compared with."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rvpt.defenses.base import ZeroShot, freeze
from rvpt.compute import Placement
from rvpt.defenses.loop import DefenderData
from rvpt.resume import Checkpointing
from rvpt.settings import runtime


KIND = "none"  # its name in params.yaml's `kind`


@dataclass(kw_only=True)
class Config:
    """Nothing is trained; the settings are ignored."""

    seed: int = runtime(0)
    placement: Placement = runtime(default_factory=Placement)
    inference_batch: int = runtime(512)
    checkpointing: Checkpointing | None = runtime(None)


def fit(model, data: DefenderData, tokenize, templates, cfg: Config, desc: str = "tune") -> tuple[ZeroShot, dict]:
    freeze(model)
    return ZeroShot(model, tokenize, templates), {}


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return {}


def save(defended: ZeroShot, folder: Path, model_cfg: dict, metadata: dict) -> None:
    """Nothing to save: the defended model is the backdoored one."""


def load(model, folder: Path, tokenize, templates) -> ZeroShot:
    return ZeroShot(model, tokenize, templates)
