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
from functools import cached_property

import torch
import torch.nn.functional as F

from rvpt.defenses.base import Defended
from rvpt.images import normalize
from rvpt.progress import progress
from rvpt.trigger_words import text_of, text_side
from rvpt.word_search import WordSearch, target_loss
from rvpt.zeroshot import device_of, unit

KINDS = ("patch", "blend", "caption")
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
    word_candidates: int = 4    # caption: tokens the gradient proposes per class and step
    kinds: tuple[str, ...] = KINDS
    seed: int = 0
    logit_scale: float = 100.0  # CLIP's: cosine logits are scaled before the cross-entropy


@dataclass
class Triggers:
    """One trigger kind, one trigger per class: images -> (1 - mask) * images + mask * pattern,
    and for the caption kind a word (a token id) before every class prompt."""

    kind: str
    masks: torch.Tensor      # [C, 1, H, W] (patch, caption) or [C, 1, 1, 1] (blend), in [0, 1]
    patterns: torch.Tensor   # [C, 3, H, W] in [0, 1]
    sizes: torch.Tensor      # [C]: mean mask value of the smallest trigger that reached `success`; 1 if none did
    reached: torch.Tensor    # [C] bool
    words: list[int] | None = None
    texts: list[str] | None = None

    def apply(self, images: torch.Tensor, label: int) -> torch.Tensor:
        mask, pattern = self.masks[label].to(images.device), self.patterns[label].to(images.device)
        return (1 - mask) * images + mask * pattern

    def word(self, label: int) -> int | None:
        return None if self.words is None else self.words[label]

    def picture(self, label: int) -> torch.Tensor:
        """[3, H, W] in [0, 1]: the image side on a grey image, for a person to look at."""
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


class Reader:
    """The scanned classifier, read and never changed: normalised image features, and class weights
    without a trigger word or, where the classifier reads text, with one."""

    def __init__(self, defended: Defended, classnames: list[str]):
        classifier = defended.classifier(classnames)
        if classifier is None:
            raise ValueError("this model cannot name the classes it is scanned on")
        self.defended, self.classnames, self.device = defended, classnames, device_of(defended.model)
        self.weights, self.bias = (t.detach().to(self.device, torch.float32) for t in classifier)

    @cached_property
    def text(self):
        """The classifier's text side (rvpt.trigger_words), built only for a caption trigger: most scans never need it."""
        return text_side(self.defended, self.classnames)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.defended.encode_image(normalize(images)).float(), dim=-1)

    def class_weights(self, word: int | None = None) -> torch.Tensor:
        """[C, D]; a caption trigger's word reaches only a classifier that reads text, as in evaluation."""
        if word is None or self.text is None:
            return self.weights
        return self.text.word_weights(torch.tensor([word]))[0].detach()

    def predict(self, images: torch.Tensor, word: int | None = None, batch_size: int = 512) -> torch.Tensor:
        weights = self.class_weights(word)
        with torch.no_grad():
            return torch.cat([(self.features(images[i:i + batch_size]) @ weights.T + self.bias).argmax(-1)
                              for i in range(0, len(images), batch_size)])


def invert(reader: Reader, images: torch.Tensor, labels: torch.Tensor, kind: str, cfg: Config,
           desc: str = "scan") -> Triggers:
    """Every class's smallest `kind` trigger on `images` (uint8 or [0, 1], [N, 3, H, W])."""
    n_classes, device = len(reader.classnames), reader.device
    generator = torch.Generator().manual_seed(cfg.seed)
    height, width = images.shape[-2:]
    mask_shape = (n_classes, 1, 1, 1) if kind == "blend" else (n_classes, 1, height, width)
    mask_logit = torch.full(mask_shape, -2.0).to(device).requires_grad_()
    pattern_logit = (0.1 * torch.randn(n_classes, 3, height, width, generator=generator)).to(device).requires_grad_()
    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=cfg.lr, betas=(0.5, 0.9))
    words = WordSearch(reader, cfg.word_candidates) if kind == "caption" else None
    cost = torch.full((n_classes,), cfg.cost, device=device)
    target = torch.arange(n_classes, device=device)
    labels = labels.to(device)
    check = torch.randperm(len(images), generator=generator)[:cfg.check_images]
    check_images, check_labels = unit(images[check], device), labels[check.to(device)]
    best_masks, best_patterns = torch.ones(mask_shape, device=device), torch.zeros_like(pattern_logit)
    best_words = words.current.clone() if words else None
    sizes = torch.ones(n_classes, device=device)
    reached = torch.zeros(n_classes, dtype=torch.bool, device=device)

    def triggered(batch: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        """[C, B, D]: features of each class's trigger on the batch."""
        mixed = ((1 - masks[:, None]) * batch[None] + (masks * patterns)[:, None]).flatten(0, 1)
        return reader.features(mixed).view(n_classes, len(batch), -1)

    def class_logits(features: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """[C, B, C]: scored with each class's own word where the trigger has one."""
        if weights is None:
            return features @ reader.weights.T + reader.bias
        return torch.einsum("cbd,ckd->cbk", features, weights) + reader.bias

    for step in progress(range(cfg.steps), f"{desc} {kind}"):
        rows = torch.randint(len(images), (cfg.batch_size,), generator=generator)
        batch, batch_labels = unit(images[rows], device), labels[rows.to(device)]
        masks, patterns = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
        features = triggered(batch, masks, patterns)
        others = (batch_labels[None] != target[:, None]).float()
        if words:
            embeddings, clean = words.embeddings(), reader.features(batch).detach()
            loss = words.loss(words.weights(embeddings), features, clean, batch_labels, others, cfg.logit_scale)
        else:
            loss = target_loss(class_logits(features, None) * cfg.logit_scale, others)
        size = masks.flatten(1).mean(1)
        optimiser.zero_grad(set_to_none=True)
        (loss + cost * size).sum().backward()
        optimiser.step()
        if words:
            words.step(features.detach(), clean, batch_labels, others, embeddings.grad, loss.detach(), cfg.logit_scale)
        if (step + 1) % cfg.adjust_every == 0 or step + 1 == cfg.steps:
            with torch.no_grad():
                masks, patterns = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
                weights = words.weights() if words else None
                predicted = class_logits(triggered(check_images, masks, patterns), weights).argmax(-1)
                others = check_labels[None] != target[:, None]
                rate = ((predicted == target[:, None]) & others).sum(1) / others.sum(1).clamp(min=1)
                succeeded = rate >= cfg.success
                size = masks.flatten(1).mean(1)
                better = succeeded & (size < sizes)
                sizes = torch.where(better, size, sizes)
                best_masks[better], best_patterns[better] = masks[better], patterns[better]
                if words:
                    best_words = torch.where(better, words.current, best_words)
                reached |= succeeded
                cost = torch.where(succeeded, cost * 1.5, cost / 1.5 ** 1.5)
    chosen = best_words.tolist() if words else None
    return Triggers(kind, best_masks.cpu(), best_patterns.cpu(), sizes.cpu(), reached.cpu(), chosen,
                    [text_of(reader.defended.tokenize, w) for w in chosen] if chosen else None)


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
