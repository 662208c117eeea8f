"""Linear probe: a fresh linear head on the frozen image features, trained on the few-shot set.

The head starts at zero, not at the text embeddings, so nothing the backdoor planted in the
text side carries over; the image encoder, and any trigger response in it, stays as it was.
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

KIND = "linear_probe"  # its name in params.yaml's `kind`


FILE = "head.safetensors"


@dataclass(kw_only=True)
class Config(SGDSchedule):
    pass


class LinearProbe(Defended):
    reads_text = False

    def __init__(self, model, head: nn.Linear, classnames: list[str]):
        super().__init__()
        self.model = model
        self.head = head
        self.classnames = list(classnames)

    def classifier(self, classnames, text_trigger=""):
        if list(classnames) != self.classnames:
            return None
        return self.head.weight, self.head.bias


def fit(model, data: DefenderData, tokenize, templates, cfg: Config, desc: str = "tune") -> tuple[LinearProbe, dict]:
    freeze(model)
    model.to(cfg.placement.device)
    features = FrozenFeatures(model, data, cfg)
    head = nn.Linear(model.text_projection.shape[1], len(data.classnames)).to(cfg.placement.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history = {"loss": [], "train_accuracy": []}
    for rows, share in steps(optimizer, len(data.labels), cfg, desc, history, (features.generator,)):
        labels = data.labels[rows].to(cfg.placement.device)
        logits = head(features(rows))
        loss = F.cross_entropy(logits, labels)
        descend(optimizer, loss, share)
        history["loss"].append(loss.item())
        history["train_accuracy"].append((logits.argmax(-1) == labels).float().mean().item())
    head.requires_grad_(False)
    return LinearProbe(model, head, data.classnames), history


def trained(defended: LinearProbe) -> dict[str, torch.Tensor]:
    return {"weight": defended.head.weight, "bias": defended.head.bias}


def save(defended: LinearProbe, folder: Path, model_cfg: dict, metadata: dict) -> None:
    tensors = {k: v.detach().contiguous() for k, v in trained(defended).items()}
    save_file(tensors, str(folder / FILE), metadata={**metadata, "classes": "\n".join(defended.classnames)})


def load(model, folder: Path, tokenize, templates) -> LinearProbe:
    state, metadata = read_safetensors(folder / FILE)
    classnames = metadata.get("classes", "").split("\n")
    weight, bias = state.get("weight"), state.get("bias")
    width = model.text_projection.shape[1]
    if weight is None or bias is None or weight.shape != (len(classnames), width) or bias.shape != (len(classnames),):
        raise ValueError(f"{folder / FILE}: not a linear head over {len(classnames)} classes and {width} features")
    head = nn.Linear(width, len(classnames))
    head.load_state_dict({"weight": weight, "bias": bias})
    head.requires_grad_(False)
    return LinearProbe(model, head, classnames)
