"""Reading model weights that may be hostile.

A checkpoint is never unpickled: safetensors files are parsed as plain tensors, and pickle-based
files (.bin, .pt, .pth) go through `torch.load(weights_only=True)`, which refuses any object that
is not a tensor or a plain container, with no fallback. Every tensor is then checked against the
model built from the config before any of them is copied in.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from rvpt import files
from rvpt.errors import BadInput, shown

# open_clip's own preference when it looks for weights in a local-dir folder.
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                "pytorch_model.bin", "pytorch_model.pth", "model.pth")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def find_weights(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    for name in WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise BadInput(f"{directory}: no weights file (looked for {', '.join(WEIGHT_NAMES[:3])}, ...)")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; anything else is a one-line BadInput."""
    path = files.regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors, metadata = {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInput(f"{path}: not a valid safetensors file ({error})") from None
    for key, tensor in tensors.items():
        check_finite(tensor, key, path)
    return tensors, metadata


def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, without running any code stored in it."""
    path = files.regular_file(path, what="checkpoint ")
    if path.suffix == ".safetensors":
        state, _ = read_safetensors(path)
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as error:
            raise BadInput(f"{path}: refused, not a weights-only checkpoint ({refusal_reason(error)})") from None
    else:
        raise BadInput(f"{path}: unknown checkpoint type (use .safetensors, or weights-only .bin/.pt/.pth)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip's training checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"{path}: expected a mapping of names to tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from DDP
    if path.suffix != ".safetensors":  # read_safetensors has checked those
        for key, tensor in state.items():
            check_finite(tensor, key, path)
    return state


def refusal_reason(error: Exception) -> str:
    """The one phrase of torch's weights-only refusal that names what the file holds (the global it
    would call), not torch's paragraph of advice on how to load it anyway."""
    text = str(error)
    found = re.search(r"Unsupported (?:global|operand)[^.\n]*?(?: GLOBAL)? ([\w.]+)", text)
    if found:
        return f"it would call {shown(found.group(1))}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return shown(lines[-1] if lines else type(error).__name__)


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path, config_path=None) -> None:
    """Refuses a state that does not match the model exactly, naming the checkpoint and the config."""
    config = f" (config {config_path})" if config_path else ""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BadInput(f"{path}: keys do not match the config{config} (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
    for key, tensor in state.items():
        want = expected[key]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise BadInput(f"{path}: {key} is {tuple(tensor.shape)} {tensor.dtype} in the checkpoint "
                           f"but {tuple(want.shape)} {want.dtype} in the config{config}")


def check_finite(tensor: torch.Tensor, key: str, path) -> None:
    """Refuses NaN or infinite weights: a model holding them only trains to NaN."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise BadInput(f"{path}: {key} holds NaN or infinite values")


def load_into(model: torch.nn.Module, path, config_path=None) -> None:
    state = read_state(path)
    check_state(model, state, path, config_path)
    model.load_state_dict(state, strict=True)
