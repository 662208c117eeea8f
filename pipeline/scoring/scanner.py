"""Trigger inversion as the pipeline runs it, the same for the scan stage, `rvpt scan` and
`rvpt defend`: rvpt/scan.py's search with params.yaml's settings on the defender's shots, the
suspect trigger's ASR on held-out validation images, and the triggers as one PNG."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pipeline.scoring.scorer import open_split
from pipeline.config.params import Params
from pipeline.config.scanner import config, scanner
from pipeline.data.splits import load_fewshot
from rvpt import compute, scan
from rvpt.images import encode_png

PIXELS = 64  # side of each trigger in the PNG, upscaled without smoothing so pixels stay visible


def held_out(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """The first scan.held_out validation images (uint8) and their labels."""
    images, labels, count = [], [], 0
    for batch in open_split(params, "val").batches(params.evaluate.batch_size, 0, False):
        images.append(batch.pixels[:scanner(params).held_out - count])
        labels.append(batch.labels[:scanner(params).held_out - count])
        count += len(images[-1])
        if count >= scanner(params).held_out:
            break
    return torch.cat(images), torch.cat(labels)


def picture(result: scan.Scan) -> bytes:
    """A row per trigger kind, a column per class, each trigger shown on grey."""
    rows = [torch.cat([triggers.picture(c) for c in range(len(result.classes))], dim=-1)
            for triggers in result.triggers.values()]
    grid = (torch.cat(rows, dim=-2).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    side = grid.shape[0] // len(rows)
    image = Image.fromarray(np.ascontiguousarray(grid))
    return encode_png(image.resize((image.width * PIXELS // side, image.height * PIXELS // side), Image.NEAREST))


def scanning(params: Params, defended, names: list[str], shots, held, desc: str = "scan") -> tuple[scan.Scan, bytes]:
    """(scan, its triggers as PNG) of the model on the `shots` (images, labels), with the held-out ASR on `held`."""
    result = scan.scan(defended, names, *shots, config(params), desc=desc)
    scan.held_out_success(result, defended, *held, params.evaluate.batch_size)
    return result, picture(result)


class Scanner:
    def __init__(self, params: Params):
        self.params = params
        self.classes = params.data.class_names
        self.shots, self.held = load_fewshot(params), held_out(params)
        self.device = compute.placement(params.compute.device, params.compute.precision).device

    def __call__(self, defended, name: str) -> tuple[scan.Scan, bytes]:
        defended.to(self.device)
        return scanning(self.params, defended, self.classes, self.shots, self.held, desc=f"scan {name}")

    def residual(self, defended, suspect: "Suspect") -> float:
        """The backdoored model's suspect trigger's held-out ASR on `defended`."""
        return scan.success_rate(defended, self.classes, suspect.triggers, suspect.label, *self.held,
                                 self.params.evaluate.batch_size)


class Suspect:
    """The one trigger a scan suspects most, and its class: all that a residual ASR applies. It can
    be stored as tensors (`tensors`, `from_tensors`), so a remembered scan need not be redone."""

    def __init__(self, triggers: scan.Triggers, label: int):
        self.triggers, self.label = triggers, label

    @classmethod
    def of(cls, result: scan.Scan) -> "Suspect":
        kind, label = result.suspect()
        return cls(result.triggers[kind], label)

    def tensors(self) -> dict[str, torch.Tensor]:
        t, c = self.triggers, self.label
        word = {} if t.words is None else {"word": torch.tensor(t.words[c])}
        return {"mask": t.masks[c].cpu().contiguous(), "pattern": t.patterns[c].cpu().contiguous(),
                "label": torch.tensor(c), **word}

    @classmethod
    def from_tensors(cls, kind: str, tensors: dict[str, torch.Tensor], classes: int) -> "Suspect":
        """Every class row holds the suspect trigger; only the suspect's row is ever applied."""
        rows = lambda t: t.unsqueeze(0).repeat(classes, *([1] * t.dim()))  # noqa: E731
        word = tensors.get("word")
        triggers = scan.Triggers(kind, rows(tensors["mask"]), rows(tensors["pattern"]), torch.ones(classes),
                                 torch.ones(classes, dtype=torch.bool),
                                 words=None if word is None else [int(word)] * classes)
        return cls(triggers, int(tensors["label"]))
