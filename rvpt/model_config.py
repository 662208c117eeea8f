"""What a params check needs to know of an open_clip model config, read from the dict alone.

Importing open_clip and building the model, even on the meta device, costs seconds, and every
stage validates params.yaml when it starts. These numbers equal those of the model the config
builds (tests/unit/test_models.py checks them against every config open_clip ships); whether a config
builds at all, and its parameter count, are checked by models.from_config where a model is built.
"""
from __future__ import annotations

from dataclasses import dataclass

# open_clip's CLIPVisionCfg and CLIPTextCfg defaults, for keys a config leaves out.
VISION_DEFAULTS = {"layers": 12, "image_size": 224, "patch_size": 16, "timm_model_name": None}
CONTEXT_DEFAULT = 77

MAX_LAYERS = 256                 # ViT-bigG has 48; even a meta-device build of millions of blocks takes hours
MAX_SIZE = 1 << 20               # any other number in a config (widths, vocabulary, context)


def check_sizes(node, where: str = "") -> None:
    """Refuses a number no real model has, before anything is built from it."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_sizes(value, f"{where}{key}.")
        return
    if isinstance(node, list):
        for value in node:
            check_sizes(value, where)
        return
    if isinstance(node, bool) or not isinstance(node, int):
        return
    name = where.rstrip(".")
    limit = MAX_LAYERS if name.endswith("layers") else MAX_SIZE
    if abs(node) > limit:
        raise ValueError(f"{name} is {node}, over the limit of {limit:,}")


def _section(model_cfg: dict, key: str) -> dict:
    section = model_cfg.get(key, {})
    if not isinstance(section, dict):
        raise ValueError(f"{key} is not a mapping")
    return section


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _pair(value, name: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or not all(_positive(v) for v in pair):
        raise ValueError(f"vision_cfg.{name} is not a positive integer or a pair of them")
    return pair


def _vit(model_cfg: dict) -> dict | None:
    """The vision section with defaults filled in, or None where the tower is not a ViT."""
    vision = {**VISION_DEFAULTS, **_section(model_cfg, "vision_cfg")}
    if vision["timm_model_name"] or isinstance(vision["layers"], (list, tuple)):
        return None  # a timm tower or open_clip's ModifiedResNet: no blocks to prompt
    return vision


def vision_depth(model_cfg: dict) -> int | None:
    """Blocks of a ViT image tower (what deep prompts attach to); None for other towers."""
    vision = _vit(model_cfg)
    if vision is None:
        return None
    layers = vision["layers"]
    if not _positive(layers):
        raise ValueError("vision_cfg.layers is not a positive integer")
    return layers


def patch_tokens(model_cfg: dict) -> int | None:
    """Patch tokens of a ViT image tower (its grid), which bounds how many prompts make sense."""
    vision = _vit(model_cfg)
    if vision is None:
        return None
    (height, width), (patch_height, patch_width) = (_pair(vision["image_size"], "image_size"),
                                                    _pair(vision["patch_size"], "patch_size"))
    return (height // patch_height) * (width // patch_width)


def context_length(model_cfg: dict) -> int:
    length = _section(model_cfg, "text_cfg").get("context_length", CONTEXT_DEFAULT)
    if not _positive(length):
        raise ValueError("text_cfg.context_length is not a positive integer")
    return length


@dataclass(frozen=True)
class ModelShape:
    """The sizes a method's settings are checked against (`fits` in each defense module)."""

    vision_depth: int | None     # ViT blocks; None for a tower that is no ViT
    patch_tokens: int | None     # the ViT's patch grid
    context_length: int          # text tokens

    @classmethod
    def of(cls, model_cfg: dict) -> "ModelShape":
        return cls(vision_depth(model_cfg), patch_tokens(model_cfg), context_length(model_cfg))
