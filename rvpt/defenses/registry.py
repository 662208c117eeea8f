"""The defenses by kind: the registry params.yaml's `kind` names, and their capabilities.

Defenses against backdoors, one module each, behind one interface.

Every module has a `Config` dataclass (its settings, declared once with their bounds: rvpt.settings)
and:
  fit(model, data, tokenize, templates, cfg, desc) -> (Defended, history)
  trained(defended) -> {name: tensor} of what the defense trained (and counts as trainable)
  save(defended, folder, model_cfg, metadata) / load(model, folder, tokenize, templates)
and, where it has them, its capabilities:
  fits(cfg, shape) -> "setting: why" these settings do not fit a model of that shape (rvpt.model_config), or None
  pairs_needed(cfg) -> how many clean image-text pairs it reads beside the shots (CleanCLIP's data)
  adapt(settings, shape) -> its settings (a params.yaml block) fitted to new data and a new model
    (`rvpt profile imagefolder`): prompts to the patch grid, batches to the shots, pairs to the supply
A module of this folder with a `KIND` is a defense: adding one is that module and its block in
params.yaml, nothing else. Only what runs defenses imports this registry: a stage that scores a
model (rvpt.defenses.base) does not depend on every defense's code.
"""
from __future__ import annotations

from dataclasses import dataclass

from rvpt.discovery import modules, unique
from rvpt.model_config import ModelShape

KINDS = unique(((m.KIND, m, m.__name__) for m in modules("rvpt.defenses") if hasattr(m, "KIND")), "defense kind")


@dataclass(frozen=True)
class DataShape:
    """What a defense's settings are fitted to when the data and the model change."""

    patch_grid: int | None   # the ViT's patch tokens (None: no patches)
    pairs: int               # clean image-text pairs the defender holds
    shots: int               # few-shot images in all (shots x classes)


def adapt(kind, settings: dict, shape: DataShape) -> dict:
    """The defense module `kind`'s params block fitted to the data (unchanged where it has no `adapt`)."""
    fitted = getattr(kind, "adapt", None)
    return fitted(dict(settings), shape) if fitted else dict(settings)


def fits(kind, cfg, shape: ModelShape) -> str | None:
    """Why the defense module `kind`'s settings do not fit the model, or None (also when it has no such limit)."""
    check = getattr(kind, "fits", None)
    return check(cfg, shape) if check else None


def pairs_needed(kind, cfg) -> int:
    """Clean image-text pairs the defense module `kind` reads beside the shots (0 for most)."""
    count = getattr(kind, "pairs_needed", None)
    return count(cfg) if count else 0
