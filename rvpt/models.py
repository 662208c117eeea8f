"""open_clip models: build from a config, save and load in open_clip's own local-dir layout.

A checkpoint is untrusted input. Weights are read with safetensors only, never unpickled,
and checked against the config before any of them is used.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rvpt.errors import BadInput
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
    try:
        config = json.loads(path.read_text())
        return config["model_cfg"]
    except FileNotFoundError as error:
        raise BadInput(f"{path}: missing model config") from error
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise BadInput(f"{path}: not an open_clip config ({error})") from error


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Loads safetensors weights into `model`, refusing anything that does not match exactly."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BadInput(f"{path}: only .safetensors checkpoints are accepted (no pickle)")
    try:
        state = load_file(str(path))
    except FileNotFoundError as error:
        raise BadInput(f"{path}: missing checkpoint") from error
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInput(f"{path}: not a valid safetensors file ({error})") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BadInput(f"{path}: keys do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, tensor in state.items():
        want = expected[key]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise BadInput(f"{path}: {key} is {tuple(tensor.shape)} {tensor.dtype} in the checkpoint "
                           f"but {tuple(want.shape)} {want.dtype} in the config")
    model.load_state_dict(state, strict=True)


def load(directory: str | os.PathLike) -> tuple[CLIP, dict]:
    """Loads a model saved by `save` (or any open_clip local-dir with safetensors weights)."""
    model_cfg = read_config(directory)
    try:
        model = build(model_cfg)
    except TypeError as error:
        raise BadInput(f"{Path(directory) / CONFIG_NAME}: invalid model config ({error})") from error
    load_weights(model, Path(directory) / WEIGHTS_NAME)
    model.eval()
    return model, model_cfg


def tokenizer(model_cfg: dict):
    """open_clip's BPE tokenizer (shipped in the wheel), cut to the model's context length."""
    context_length = model_cfg["text_cfg"]["context_length"]
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def count_parameters(parameters) -> int:
    return sum(p.numel() for p in parameters)
