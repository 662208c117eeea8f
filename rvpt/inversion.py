"""Trigger inversion itself: the smallest trigger of one kind that sends the other classes' images
to each class, every class optimised at once (rvpt/scan.py turns the sizes into a verdict).

A trigger is a mask and a pattern (x' = (1 - m) x + m p); the caption kind adds one word before
every class prompt, searched for over the vocabulary (rvpt/word_search.py). Each class's size
penalty follows Neural Cleanse's schedule: raised while its trigger succeeds, lowered while not.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rvpt.defenses.base import Defended
from rvpt.images import normalize
from rvpt.progress import progress
from rvpt.trigger_words import text_of, text_side
from rvpt.word_search import WordSearch, target_loss
from rvpt.zeroshot import device_of, unit

if TYPE_CHECKING:
    from rvpt.scan import Config  # the scanner's settings; rvpt/scan.py imports this module


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


class Inversion:
    """One trigger kind optimised for every class at once: each class's mask and pattern (and word,
    for the caption kind), the size penalty Neural Cleanse's schedule adjusts per class, and the
    smallest trigger that has reached `success` so far."""

    def __init__(self, reader: Reader, images: torch.Tensor, labels: torch.Tensor, kind: str, cfg: Config):
        self.reader, self.images, self.kind, self.cfg = reader, images, kind, cfg
        n_classes, device = len(reader.classnames), reader.device
        self.generator = torch.Generator().manual_seed(cfg.seed)
        height, width = images.shape[-2:]
        mask_shape = (n_classes, 1, 1, 1) if kind == "blend" else (n_classes, 1, height, width)
        self.mask_logit = torch.full(mask_shape, -2.0).to(device).requires_grad_()
        self.pattern_logit = (0.1 * torch.randn(n_classes, 3, height, width, generator=self.generator)).to(
            device).requires_grad_()
        self.optimiser = torch.optim.Adam([self.mask_logit, self.pattern_logit], lr=cfg.lr, betas=(0.5, 0.9))
        self.words = WordSearch(reader, cfg.word_candidates) if kind == "caption" else None
        self.cost = torch.full((n_classes,), cfg.cost, device=device)
        self.target = torch.arange(n_classes, device=device)
        self.labels = labels.to(device)
        check = torch.randperm(len(images), generator=self.generator)[:cfg.check_images]
        self.check_images, self.check_labels = unit(images[check], device), self.labels[check.to(device)]
        self.best_masks, self.best_patterns = torch.ones(mask_shape, device=device), torch.zeros_like(self.pattern_logit)
        self.best_words = self.words.current.clone() if self.words else None
        self.sizes = torch.ones(n_classes, device=device)
        self.reached = torch.zeros(n_classes, dtype=torch.bool, device=device)

    def triggered(self, batch: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        """[C, B, D]: features of each class's trigger on the batch."""
        mixed = ((1 - masks[:, None]) * batch[None] + (masks * patterns)[:, None]).flatten(0, 1)
        return self.reader.features(mixed).view(len(self.target), len(batch), -1)

    def class_logits(self, features: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """[C, B, C]: scored with each class's own word where the trigger has one."""
        if weights is None:
            return features @ self.reader.weights.T + self.reader.bias
        return torch.einsum("cbd,ckd->cbk", features, weights) + self.reader.bias

    def step(self) -> None:
        """One optimiser step on a batch: every class's trigger pushed to its class, its size penalised."""
        cfg, words, reader = self.cfg, self.words, self.reader
        rows = torch.randint(len(self.images), (cfg.batch_size,), generator=self.generator)
        batch, batch_labels = unit(self.images[rows], reader.device), self.labels[rows.to(reader.device)]
        masks, patterns = torch.sigmoid(self.mask_logit), torch.sigmoid(self.pattern_logit)
        features = self.triggered(batch, masks, patterns)
        others = (batch_labels[None] != self.target[:, None]).float()
        if words:
            embeddings, clean = words.embeddings(), reader.features(batch).detach()
            loss = words.loss(words.weights(embeddings), features, clean, batch_labels, others, cfg.logit_scale)
        else:
            loss = target_loss(self.class_logits(features, None) * cfg.logit_scale, others)
        size = masks.flatten(1).mean(1)
        self.optimiser.zero_grad(set_to_none=True)
        (loss + self.cost * size).sum().backward()
        self.optimiser.step()
        if words:
            words.step(features.detach(), clean, batch_labels, others, embeddings.grad, loss.detach(), cfg.logit_scale)

    @torch.no_grad()
    def check(self) -> None:
        """Keeps each class's smallest trigger that reaches `success`, and adjusts its size penalty."""
        masks, patterns = torch.sigmoid(self.mask_logit), torch.sigmoid(self.pattern_logit)
        weights = self.words.weights() if self.words else None
        predicted = self.class_logits(self.triggered(self.check_images, masks, patterns), weights).argmax(-1)
        others = self.check_labels[None] != self.target[:, None]
        rate = ((predicted == self.target[:, None]) & others).sum(1) / others.sum(1).clamp(min=1)
        succeeded = rate >= self.cfg.success
        size = masks.flatten(1).mean(1)
        better = succeeded & (size < self.sizes)
        self.sizes = torch.where(better, size, self.sizes)
        self.best_masks[better], self.best_patterns[better] = masks[better], patterns[better]
        if self.words:
            self.best_words = torch.where(better, self.words.current, self.best_words)
        self.reached |= succeeded
        self.cost = torch.where(succeeded, self.cost * 1.5, self.cost / 1.5 ** 1.5)

    def result(self) -> Triggers:
        chosen = self.best_words.tolist() if self.words else None
        return Triggers(self.kind, self.best_masks.cpu(), self.best_patterns.cpu(), self.sizes.cpu(),
                        self.reached.cpu(), chosen,
                        [text_of(self.reader.defended.tokenize, w) for w in chosen] if chosen else None)


def invert(reader: Reader, images: torch.Tensor, labels: torch.Tensor, kind: str, cfg: Config,
           desc: str = "scan") -> Triggers:
    """Every class's smallest `kind` trigger on `images` (uint8 or [0, 1], [N, 3, H, W])."""
    inversion = Inversion(reader, images, labels, kind, cfg)
    for step in progress(range(cfg.steps), f"{desc} {kind}"):
        inversion.step()
        if (step + 1) % cfg.adjust_every == 0 or step + 1 == cfg.steps:
            inversion.check()
    return inversion.result()
