"""CoOp (Zhou et al., 2022): learned text context vectors in place of the prompt template.

Both encoders stay frozen. The class weights come from the text tower run on
"[trigger word] X X ... X <class>." where the X token embeddings are replaced by the learned
context, so the same context also names classes it was never tuned on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from rvpt.checkpoint import read_safetensors
from rvpt.defenses.base import Defended, freeze
from rvpt.defenses.loop import DefenderData, FrozenFeatures, SGDSchedule, adapt, descend, steps  # noqa: F401 (adapt: its `adapt`)
from rvpt.model_config import ModelShape
from rvpt.poisoning import with_text_trigger
from rvpt.settings import setting

KIND = "coop"  # its name in params.yaml's `kind`


FILE = "context.safetensors"
PLACEHOLDER = "X"


@dataclass(kw_only=True)
class Config(SGDSchedule):
    context: int = setting(gt=0, doc="learned context tokens before the class name")
    init_std: float = setting(gt=0, le=10)


def fits(cfg: Config, shape: ModelShape) -> str | None:
    """The context must leave room for the start, one class-name token and the end."""
    most = shape.context_length - 3
    if cfg.context > most:
        return (f"context: {cfg.context} leaves no room for the class name in the text context of "
                f"{shape.context_length} tokens (at most {most})")
    return None


def encode_with_context(model, tokens: torch.Tensor, slots: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text, with the token embeddings at `slots` ([C, T] bool) replaced by `context`."""
    x = model.token_embedding(tokens)
    x[slots] = context.repeat(len(tokens), 1)
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(len(tokens)), tokens.argmax(dim=-1)]
    return x @ model.text_projection


class CoOp(Defended):
    def __init__(self, model, tokenize, context: torch.Tensor):
        super().__init__()
        self.model = model
        self.tokenize = tokenize
        self.context = nn.Parameter(context)

    def prompt_tokens(self, classnames: list[str], text_trigger: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        filler = " ".join([PLACEHOLDER] * len(self.context))
        tokens = self.tokenize([with_text_trigger(f"{filler} {name}.", text_trigger) for name in classnames])
        placeholder = self.tokenize([PLACEHOLDER])[0, 1]
        slots = tokens == placeholder
        # Only the first len(context) placeholders per row are context; a class name could contain an "x".
        slots &= slots.cumsum(dim=1) <= len(self.context)
        return tokens, slots

    def class_weights(self, classnames: list[str], text_trigger: str = "") -> torch.Tensor:
        tokens, slots = self.prompt_tokens(classnames, text_trigger)
        device = self.context.device
        return F.normalize(encode_with_context(self.model, tokens.to(device), slots.to(device), self.context), dim=-1)

    def classifier(self, classnames, text_trigger=""):
        with torch.no_grad():
            return self.class_weights(classnames, text_trigger), torch.zeros(len(classnames))


def fit(model, data: DefenderData, tokenize, templates, cfg: Config, desc: str = "tune") -> tuple[CoOp, dict]:
    freeze(model)
    model.to(cfg.placement.device)
    width = model.token_embedding.weight.shape[1]
    generator = torch.Generator().manual_seed(cfg.seed)
    context = torch.randn(cfg.context, width, generator=generator) * cfg.init_std
    defended = CoOp(model, tokenize, context.to(cfg.placement.device))
    features = FrozenFeatures(model, data, cfg)
    logit_scale = model.logit_scale.exp().detach().float()
    optimizer = torch.optim.SGD([defended.context], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history = {"loss": [], "train_accuracy": []}
    for rows, share in steps(optimizer, len(data.labels), cfg, desc, history, (features.generator,)):
        labels = data.labels[rows].to(cfg.placement.device)
        logits = logit_scale * features(rows) @ defended.class_weights(data.classnames).T
        loss = F.cross_entropy(logits, labels)
        descend(optimizer, loss, share)
        history["loss"].append(loss.item())
        history["train_accuracy"].append((logits.argmax(-1) == labels).float().mean().item())
    defended.context.requires_grad_(False)
    return defended, history


def trained(defended: CoOp) -> dict[str, torch.Tensor]:
    return {"context": defended.context}


def save(defended: CoOp, folder: Path, model_cfg: dict, metadata: dict) -> None:
    save_file({"context": defended.context.detach().contiguous()}, str(folder / FILE), metadata=metadata)


def load(model, folder: Path, tokenize, templates) -> CoOp:
    context = read_safetensors(folder / FILE)[0].get("context")
    if context is None or context.dtype != model.token_embedding.weight.dtype or context.ndim != 2 or context.shape[1] != model.token_embedding.weight.shape[1]:
        raise ValueError(f"{folder / FILE}: no float32 [tokens, width] context that fits the text tower")
    defended = CoOp(model, tokenize, context)
    defended.context.requires_grad_(False)
    return defended
