"""open_clip models: build from a config, save and load in open_clip's own local-dir layout.

A checkpoint is untrusted input: see rvpt.checkpoint for how its weights are read and checked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP
from safetensors.torch import save_file

from rvpt import checkpoint, files
from rvpt.errors import BadInput
from rvpt.model_config import check_sizes
from rvpt.images import MEAN, STD

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def build(model_cfg: dict, seed: int | None = None) -> CLIP:
    """A randomly initialised open_clip model from a model config dict (no download)."""
    if seed is not None:
        torch.manual_seed(seed)
    cfg = json.loads(json.dumps(model_cfg))
    model = CLIP(**cfg)
    model.eval()
    return model


def save(model: CLIP, model_cfg: dict, directory: str | os.PathLike) -> None:
    """Writes open_clip_config.json + open_clip_model.safetensors into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    image_size = model_cfg["vision_cfg"]["image_size"]
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"size": image_size, "mean": list(MEAN), "std": list(STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise BadInput(f"{path}: missing model config")
    config = files.read_json(path, CONFIG_BYTES)
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise BadInput(f"{path}: not an open_clip config (no model_cfg mapping)")
    return config["model_cfg"]


CONFIG_BYTES = 1 << 20  # an open_clip_config.json is a few KB
MAX_PARAMETERS = 5_000_000_000  # twice ViT-bigG; a config asking for more is refused, not allocated
def check_config(model_cfg: dict) -> CLIP:
    """The model a config describes, built on the meta device (no memory, no values), so that a
    hostile or mistyped config is refused before anything is allocated."""
    if not isinstance(model_cfg, dict):
        raise ValueError("not a mapping")
    check_sizes(model_cfg)
    try:
        with torch.device("meta"):
            model = CLIP(**json.loads(json.dumps(model_cfg)))
            size = count_parameters(model.parameters())
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, RuntimeError, ZeroDivisionError,
            OverflowError) as error:
        raise ValueError(f"not a buildable open_clip config ({type(error).__name__}: {error})") from None
    if size > MAX_PARAMETERS:
        raise ValueError(f"{size:,} parameters, over the limit of {MAX_PARAMETERS:,}")
    return model


def vision_depth(model: CLIP) -> int | None:
    """Blocks of a ViT image tower (what deep prompts attach to); None for other towers."""
    transformer = getattr(model.visual, "transformer", None)
    return len(transformer.resblocks) if transformer is not None else None


def from_config(model_cfg: dict, where, seed: int | None = None) -> CLIP:
    """A randomly initialised model, once the config is known to build (BadInput naming `where` if not)."""
    try:
        check_config(model_cfg)
    except ValueError as error:
        raise BadInput(f"{where}: {error}") from None
    return build(model_cfg, seed)


def from_weights(model_cfg: dict, weights: str | os.PathLike, config_name) -> CLIP:
    """The model a config describes, with a weights file's tensors, read without unpickling anything."""
    model = from_config(model_cfg, config_name)
    checkpoint.load_into(model, weights, config_name)
    return model.eval()


def load(directory: str | os.PathLike) -> tuple[CLIP, dict]:
    """Loads an open_clip local-dir folder (ours, or anyone's)."""
    model_cfg = read_config(directory)
    return from_weights(model_cfg, checkpoint.find_weights(directory), Path(directory) / CONFIG_NAME), model_cfg


def named_config(name: str) -> dict | None:
    """An open_clip model's config by name (configs ship inside the open_clip wheel; no download)."""
    config = open_clip.get_model_config(name)
    return json.loads(json.dumps(config)) if config is not None else None


def tokenizer(model_cfg: dict):
    """open_clip's BPE tokenizer (shipped in the wheel), cut to the model's context length."""
    return RememberingTokenizer(context_length=model_cfg["text_cfg"]["context_length"])


class RememberingTokenizer(open_clip.tokenizer.SimpleTokenizer):
    """open_clip's SimpleTokenizer, which encodes each distinct text once: a corpus repeats its
    captions (28,457 distinct in the default world's 40,000) and CleanCLIP tokenizes its pairs
    again every epoch. Each text's ids do not depend on the others', so the output is the same."""

    REMEMBERED = 2 ** 17  # texts kept across calls; past it, a call still encodes each distinct text once

    def __init__(self, context_length: int):
        super().__init__(context_length=context_length)
        self.known: dict[str, torch.Tensor] = {}

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if context_length not in (None, self.context_length) or self.reduction_fn is not None:
            return super().__call__(texts, context_length)
        found = {text: self.known[text] for text in texts if text in self.known}
        new = [text for text in dict.fromkeys(texts) if text not in found]
        if new:
            found.update(zip(new, super().__call__(new)))
            room = self.REMEMBERED - len(self.known)
            self.known.update((text, found[text]) for text in new[:max(room, 0)])
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return torch.stack([found[text] for text in texts])


def count_parameters(parameters) -> int:
    return sum(p.numel() for p in parameters)
