"""Is this classifier backdoored? Trigger inversion in the style of Neural Cleanse (Wang et al., 2019),
fitted to CLIP's zero-shot classifier, with no trigger given.

For every class c, the smallest trigger that sends `success` of clean images of the other
classes to c is optimised, in two forms:

  patch: x' = (1 - m) * x + m * p, a mask m [H, W] and a pattern p [3, H, W]; size = mean(m)
  blend: x' = (1 - a) * x + a * p, one ratio a and a full-image pattern p;   size = a

A backdoor is a shortcut to its target class, so that class needs a much smaller trigger than
the others. The anomaly index of class c is (median - log size_c) / (1.4826 * MAD) over the
classes' log sizes (Neural Cleanse takes raw sizes; see anomaly_indices); only the small side
counts, and an index above `threshold` flags c. Every class's triggers are
optimised together in one batch, each with its own size penalty, which Neural Cleanse's schedule
raises while the trigger succeeds and lowers while it does not.

The classifier is read, never changed: only the triggers have gradients.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from rvpt.defenses.base import Defended
from rvpt.images import normalize
from rvpt.progress import progress
from rvpt.zeroshot import device_of, unit

KINDS = ("patch", "blend")
MAD_TO_STD = 1.4826  # the MAD of a normal distribution, in standard deviations


@dataclass(frozen=True)
class Config:
    steps: int = 150            # optimiser steps per trigger kind (all classes at once)
    batch_size: int = 24        # clean images per step, shared by every class's trigger
    lr: float = 0.1
    success: float = 0.9        # share of other classes' images a trigger must send to its class
    cost: float = 0.5           # first weight of the size penalty, per class
    adjust_every: int = 10      # steps between size-penalty adjustments (and best-trigger checks)
    check_images: int = 96      # images each check measures the triggers' success on
    threshold: float = 2.0      # anomaly index that flags a class (Neural Cleanse's)
    kinds: tuple[str, ...] = KINDS
    seed: int = 0
    logit_scale: float = 100.0  # CLIP's: cosine logits are scaled before the cross-entropy


@dataclass
class Triggers:
    """One trigger kind, one trigger per class: images -> (1 - mask) * images + mask * pattern."""

    kind: str
    masks: torch.Tensor      # [C, 1, H, W] (patch) or [C, 1, 1, 1] (blend), in [0, 1]
    patterns: torch.Tensor   # [C, 3, H, W] in [0, 1]
    sizes: torch.Tensor      # [C]: mean mask value of the smallest trigger that reached `success`; 1 if none did
    reached: torch.Tensor    # [C] bool

    def apply(self, images: torch.Tensor, label: int) -> torch.Tensor:
        mask, pattern = self.masks[label].to(images.device), self.patterns[label].to(images.device)
        return (1 - mask) * images + mask * pattern

    def picture(self, label: int) -> torch.Tensor:
        """[3, H, W] in [0, 1]: the trigger on a grey image, for a person to look at."""
        return self.apply(torch.full_like(self.patterns[label], 0.5), label)


@dataclass
class Scan:
    classes: list[str]
    triggers: dict[str, Triggers]
    anomaly: dict[str, list[float]]          # per kind, per class
    threshold: float
    held_out: dict = field(default_factory=dict)  # filled by `held_out_success`

    def suspect(self) -> tuple[str, int]:
        """(kind, class) with the highest anomaly index: the flagged target if any is flagged."""
        return max(((kind, c) for kind, values in self.anomaly.items() for c in range(len(values))),
                   key=lambda kc: self.anomaly[kc[0]][kc[1]])

    @property
    def anomaly_index(self) -> float:
        kind, c = self.suspect()
        return self.anomaly[kind][c]

    @property
    def flagged(self) -> bool:
        return self.anomaly_index > self.threshold

    @property
    def target(self) -> str | None:
        return self.classes[self.suspect()[1]] if self.flagged else None

    def report(self) -> dict:
        kind, c = self.suspect()
        return {"flagged": self.flagged, "target": self.target, "suspect": self.classes[c], "suspect_kind": kind,
                "anomaly_index": self.anomaly_index, "threshold": self.threshold, **self.held_out,
                "classes": {name: {k: {"size": float(t.sizes[i]), "reached": bool(t.reached[i]),
                                       "anomaly_index": self.anomaly[k][i]} for k, t in self.triggers.items()}
                            for i, name in enumerate(self.classes)}}


def median(values: torch.Tensor) -> torch.Tensor:
    """The middle value, or the mean of the two middle ones (torch.median takes the lower)."""
    return values.quantile(0.5)


def anomaly_indices(sizes: torch.Tensor) -> list[float]:
    """(median - log size) / (1.4826 * MAD) per class, over log sizes: a backdoor makes its trigger a
    multiple smaller, and classes' natural trigger sizes differ by factors, which on the raw scale
    inflate the MAD. A floor on the MAD keeps near-equal sizes from dividing by almost 0."""
    logs = sizes.double().clamp(min=1e-6).log()
    middle = median(logs)
    mad = median((logs - middle).abs()) * MAD_TO_STD
    return ((middle - logs) / mad.clamp(min=1e-2)).tolist()


def classifier_logits(defended: Defended, classnames: list[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """images in [0, 1] -> the defended model's logits over `classnames`, differentiable in the images."""
    classifier = defended.classifier(classnames)
    if classifier is None:
        raise ValueError("this model cannot name the classes it is scanned on")
    weights, bias = (tensor.detach().to(device_of(defended.model), torch.float32) for tensor in classifier)

    def logits(images: torch.Tensor) -> torch.Tensor:
        features = defended.encode_image(normalize(images)).float()
        return F.normalize(features, dim=-1) @ weights.T + bias

    return logits


def predict(logits: Callable, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([logits(images[i:i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])


def invert(logits: Callable, images: torch.Tensor, labels: torch.Tensor, n_classes: int, kind: str,
           cfg: Config, device: torch.device, desc: str = "scan") -> Triggers:
    """Every class's smallest `kind` trigger on `images` (uint8 or [0, 1], [N, 3, H, W])."""
    generator = torch.Generator().manual_seed(cfg.seed)
    height, width = images.shape[-2:]
    mask_shape = (n_classes, 1, height, width) if kind == "patch" else (n_classes, 1, 1, 1)
    mask_logit = torch.full(mask_shape, -2.0).to(device).requires_grad_()
    pattern_logit = (0.1 * torch.randn(n_classes, 3, height, width, generator=generator)).to(device).requires_grad_()
    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=cfg.lr, betas=(0.5, 0.9))
    cost = torch.full((n_classes,), cfg.cost, device=device)
    target = torch.arange(n_classes, device=device)
    labels = labels.to(device)
    check = torch.randperm(len(images), generator=generator)[:cfg.check_images]
    check_images, check_labels = unit(images[check], device), labels[check.to(device)]
    best_masks, best_patterns = torch.ones(mask_shape, device=device), torch.zeros_like(pattern_logit)
    sizes = torch.ones(n_classes, device=device)
    reached = torch.zeros(n_classes, dtype=torch.bool, device=device)

    def triggered(batch: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        return ((1 - masks[:, None]) * batch[None] + (masks * patterns)[:, None]).flatten(0, 1)  # [C * B, 3, H, W]

    for step in progress(range(cfg.steps), f"{desc} {kind}"):
        rows = torch.randint(len(images), (cfg.batch_size,), generator=generator)
        batch, batch_labels = unit(images[rows], device), labels[rows.to(device)]
        masks, patterns = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
        out = logits(triggered(batch, masks, patterns)).view(n_classes, cfg.batch_size, -1) * cfg.logit_scale
        others = (batch_labels[None] != target[:, None]).float()  # a class's own images prove nothing
        loss = F.cross_entropy(out.flatten(0, 1), target.repeat_interleave(cfg.batch_size), reduction="none")
        loss = (loss.view(n_classes, -1) * others).sum(1) / others.sum(1).clamp(min=1)
        size = masks.flatten(1).mean(1)
        optimiser.zero_grad(set_to_none=True)
        (loss + cost * size).sum().backward()
        optimiser.step()
        if (step + 1) % cfg.adjust_every == 0 or step + 1 == cfg.steps:
            with torch.no_grad():
                masks, patterns = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
                predicted = logits(triggered(check_images, masks, patterns)).argmax(-1).view(n_classes, -1)
                others = check_labels[None] != target[:, None]
                rate = ((predicted == target[:, None]) & others).sum(1) / others.sum(1).clamp(min=1)
                succeeded = rate >= cfg.success
                size = masks.flatten(1).mean(1)
                better = succeeded & (size < sizes)
                sizes = torch.where(better, size, sizes)
                best_masks[better], best_patterns[better] = masks[better], patterns[better]
                reached |= succeeded
                cost = torch.where(succeeded, cost * 1.5, cost / 1.5 ** 1.5)
    return Triggers(kind, best_masks.cpu(), best_patterns.cpu(), sizes.cpu(), reached.cpu())


def scan(defended: Defended, classnames: list[str], images: torch.Tensor, labels: torch.Tensor, cfg: Config,
         desc: str = "scan") -> Scan:
    """Scans `defended` (any zero-shot, prompted, probed or CoOp classifier) on clean labelled images.
    Its weights are untouched: they are frozen for the scan and restored as they were."""
    device = device_of(defended.model)
    trainable = [p.requires_grad for p in defended.parameters()]
    for parameter in defended.parameters():
        parameter.requires_grad_(False)
    try:
        defended.eval()
        logits = classifier_logits(defended, classnames)
        triggers = {kind: invert(logits, images, labels, len(classnames), kind, cfg, device, desc)
                    for kind in cfg.kinds}
    finally:
        for parameter, flag in zip(defended.parameters(), trainable):
            parameter.requires_grad_(flag)
    return Scan(list(classnames), triggers, {kind: anomaly_indices(t.sizes) for kind, t in triggers.items()},
                cfg.threshold)


def success_rate(defended: Defended, classnames: list[str], triggers: Triggers, label: int, images: torch.Tensor,
                 labels: torch.Tensor, batch_size: int = 512) -> float:
    """Share of `images` outside class `label` that the trigger sends to `label`: its held-out ASR."""
    keep = labels != label
    if not keep.any():
        raise ValueError("no image outside the trigger's class")
    device = device_of(defended.model)
    logits = classifier_logits(defended, classnames)
    predicted = torch.cat([predict(logits, triggers.apply(unit(images[keep][i:i + batch_size], device), label))
                           for i in range(0, int(keep.sum()), batch_size)])
    return (predicted == label).float().mean().item()


def held_out_success(result: Scan, defended: Defended, images: torch.Tensor, labels: torch.Tensor,
                     batch_size: int = 512) -> float:
    """The suspect trigger's ASR on held-out images; kept in the scan's report."""
    kind, c = result.suspect()
    rate = success_rate(defended, result.classes, result.triggers[kind], c, images, labels, batch_size)
    result.held_out = {"held_out_success": rate, "held_out_images": int((labels != c).sum())}
    return rate
