"""Is this classifier backdoored? Trigger inversion in the style of Neural Cleanse (Wang et al., 2019),
fitted to CLIP's zero-shot classifier, with no trigger given.

For every class c, the smallest trigger that sends `success` of clean images of the other
classes to c is optimised, in three forms:

  patch:   x' = (1 - m) * x + m * p, a mask m [H, W] and a pattern p [3, H, W]; size = mean(m)
  blend:   x' = (1 - a) * x + a * p, one ratio a and a full-image pattern p;   size = a
  caption: a patch as above, plus one word prefixed to every class prompt (TrojVQA's two keys);
           size = mean(m). The word is searched for over the vocabulary's whole words, GCG-style
           (Zou et al., 2023): the gradient at the word's embedding ranks `word_candidates`
           tokens, and the one with the lowest loss on the step's batch is kept.

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
from typing import Literal

import torch

from rvpt.defenses.base import Defended
from rvpt.inversion import Reader, Triggers, invert
from rvpt.zeroshot import unit
from rvpt.settings import MAX_BATCH, MAX_LR, MAX_STEPS, MAX_WEIGHT, check, runtime, setting

KINDS = ("patch", "blend", "caption")
MAD_TO_STD = 1.4826  # the MAD of a normal distribution, in standard deviations


@dataclass(frozen=True, kw_only=True)
class Config:
    """The scanner's settings; params.yaml's `scan` block gives them."""

    steps: int = setting(gt=0, le=MAX_STEPS, doc="optimiser steps per trigger kind, every class's trigger at once")
    batch_size: int = setting(gt=0, le=MAX_BATCH, doc="clean images per step, shared by every class's trigger")
    lr: float = setting(gt=0, le=MAX_LR)
    success: float = setting(gt=0, le=1, doc="share of other classes' images a trigger must send to its class")
    cost: float = setting(gt=0, le=MAX_WEIGHT, doc="first weight of the size penalty, raised while it succeeds")
    adjust_every: int = setting(gt=0, le=MAX_STEPS, doc="steps between size-penalty adjustments and checks")
    check_images: int = setting(gt=0, le=MAX_BATCH, doc="images each check measures the triggers' success on")
    threshold: float = setting(gt=0, le=MAX_WEIGHT, doc="anomaly index that flags a class (Neural Cleanse's 2)")
    word_candidates: int = setting(gt=0, le=MAX_BATCH, doc="caption: tokens the gradient proposes per class and step")
    kinds: tuple[Literal[KINDS], ...] = setting(doc="trigger kinds: patch, blend, caption")
    seed: int = runtime(0)
    logit_scale: float = runtime(100.0)  # CLIP's: cosine logits are scaled before the cross-entropy

    def __post_init__(self):
        check(self)
        if not self.kinds:
            raise ValueError("kinds: name at least one trigger kind")
        object.__setattr__(self, "kinds", tuple(dict.fromkeys(self.kinds)))  # each kind once, in the order given


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
        words = self.triggers[kind].texts
        return {"flagged": self.flagged, "target": self.target, "suspect": self.classes[c], "suspect_kind": kind,
                "suspect_word": words[c] if words else None,
                "anomaly_index": self.anomaly_index, "threshold": self.threshold, **self.held_out,
                "classes": {name: {k: {"size": float(t.sizes[i]), "reached": bool(t.reached[i]),
                                       "anomaly_index": self.anomaly[k][i], **({"word": t.texts[i]} if t.texts else {})}
                                   for k, t in self.triggers.items()}
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


def scan(defended: Defended, classnames: list[str], images: torch.Tensor, labels: torch.Tensor, cfg: Config,
         desc: str = "scan") -> Scan:
    """Scans `defended` (any zero-shot, prompted, probed or CoOp classifier) on clean labelled images.
    Its weights are untouched: they are frozen for the scan and restored as they were. The caption
    kind is left out for a classifier that reads no text: no caption trigger can reach it."""
    trainable = [p.requires_grad for p in defended.parameters()]
    for parameter in defended.parameters():
        parameter.requires_grad_(False)
    try:
        defended.eval()
        reader = Reader(defended, classnames)
        kinds = [k for k in cfg.kinds if k != "caption" or reader.text is not None]
        triggers = {kind: invert(reader, images, labels, kind, cfg, desc) for kind in kinds}
    finally:
        for parameter, flag in zip(defended.parameters(), trainable):
            parameter.requires_grad_(flag)
    return Scan(list(classnames), triggers, {kind: anomaly_indices(t.sizes) for kind, t in triggers.items()},
                cfg.threshold)


def success_rate(defended: Defended, classnames: list[str], triggers: Triggers, label: int, images: torch.Tensor,
                 labels: torch.Tensor, batch_size: int = 512) -> float:
    """Share of `images` outside class `label` that the trigger sends to `label`: its held-out ASR."""
    kept = images[labels != label]
    if not len(kept):
        raise ValueError("no image outside the trigger's class")
    reader = Reader(defended, classnames)
    predicted = torch.cat([reader.predict(triggers.apply(unit(kept[i:i + batch_size], reader.device), label),
                                          triggers.word(label), batch_size)
                           for i in range(0, len(kept), batch_size)])
    return (predicted == label).float().mean().item()


def suspect_success(result: Scan, defended: Defended, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 512) -> float:
    """The ASR of `result`'s suspect trigger on `defended` (the scanned model, or what a defense made of it)."""
    kind, c = result.suspect()
    return success_rate(defended, result.classes, result.triggers[kind], c, images, labels, batch_size)


def held_out_success(result: Scan, defended: Defended, images: torch.Tensor, labels: torch.Tensor,
                     batch_size: int = 512) -> float:
    """The suspect trigger's ASR on held-out images; kept in the scan's report."""
    rate = suspect_success(result, defended, images, labels, batch_size)
    result.held_out = {"held_out_success": rate, "held_out_images": int((labels != result.suspect()[1]).sum())}
    return rate
