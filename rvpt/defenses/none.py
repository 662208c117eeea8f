"""No defense: the backdoored model scored zero-shot, the row every defense is compared with."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rvpt.defenses.base import ZeroShot, freeze
from rvpt.defenses.loop import DefenderData, Schedule


@dataclass
class Config(Schedule):
    """Nothing is trained; the settings are ignored."""


def fit(model, data: DefenderData, tokenize, templates, cfg: Config, desc: str = "tune") -> tuple[ZeroShot, dict]:
    freeze(model)
    return ZeroShot(model, tokenize, templates), {}


def trained(defended: ZeroShot) -> dict[str, torch.Tensor]:
    return {}


def save(defended: ZeroShot, folder: Path, model_cfg: dict, metadata: dict) -> None:
    """Nothing to save: the defended model is the backdoored one."""


def load(model, folder: Path, tokenize, templates) -> ZeroShot:
    return ZeroShot(model, tokenize, templates)
