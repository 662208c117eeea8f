"""One defense fitted and saved, the same way for `rvpt stage tune` and for `rvpt defend`:
params.yaml's settings block is the defense's whole configuration; where it runs comes from
`compute`, and the frozen passes take evaluate.batch_size images at a time."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import artifacts
from pipeline.params import Params
from rvpt import compute
from rvpt.defenses import KINDS
from rvpt.resume import Checkpointing


def settings(params: Params, name: str, checkpointing: Checkpointing | None = None):
    """The defense's Config: its params block, with `augment: none` as no augmentation."""
    spec = params.defenses[name]
    values = spec.model_dump(exclude={"kind"})
    if "augment" in values:
        values["augment"] = None if values["augment"] == "none" else tuple(values["augment"]["scale"])
    return KINDS[spec.kind].Config(**values, seed=params.tune.seed, checkpointing=checkpointing,
                                   placement=compute.placement(params.compute.device, params.compute.precision),
                                   inference_batch=params.evaluate.batch_size)


def fit(params: Params, name: str, model, data, tokenize, templates: list[str], desc: str,
        checkpointing: Checkpointing | None = None):
    """(defended model, training history)."""
    torch.manual_seed(params.tune.seed)
    kind = KINDS[params.defenses[name].kind]
    return kind.fit(model, data, tokenize, templates, settings(params, name, checkpointing), desc=desc)


def save(params: Params, name: str, defended, history: dict, folder: Path, model_cfg: dict,
         metadata: dict[str, str]) -> None:
    """What the defense trained, and its loss curve, into `folder`."""
    KINDS[params.defenses[name].kind].save(defended.cpu(), folder, model_cfg, metadata)
    if history.get("loss"):
        artifacts.write_curve(folder / "loss.csv", history["loss"])
