"""Pretrained weights for an open_clip model name: a local file or folder, or an open_clip tag
(such as `openai`) resolved in the local Hugging Face cache, never over the network.

open_clip itself would download a missing tag and, for OpenAI's original TorchScript files,
unpickle it; rvpt reads only safetensors or weights-only state dicts (rvpt.checkpoint).
"""
from __future__ import annotations

from pathlib import Path

import open_clip
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.constants import HF_HUB_CACHE

from rvpt import checkpoint, files
from rvpt.errors import BadInput

HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hub_repo(name: str, tag: str) -> str | None:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    return cfg.get("hf_hub", "").strip("/") or None if cfg else None


def weights_file(name: str, pretrained: str) -> Path:
    """The file holding `pretrained` weights for model `name`."""
    local = Path(pretrained).expanduser()
    if local.is_dir():
        return checkpoint.find_weights(local)
    if local.exists():  # a device or a FIFO is refused here, before anything reads it
        return files.regular_file(local, what="model.pretrained: ")
    repo = hub_repo(name, pretrained)
    if repo is None:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise BadInput(f"model.pretrained: {pretrained!r} is neither a local file or folder nor an open_clip tag "
                       f"of {name} (tags: {tags})")
    for filename in HUB_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    raise BadInput(f"model.pretrained: {name}/{pretrained} is {repo} on the Hugging Face hub, not in the local cache "
                   f"{HF_HUB_CACHE}; on a machine with internet run `huggingface-cli download {repo} "
                   f"{HUB_FILES[0]}` (and copy the cache), or give a local file")
