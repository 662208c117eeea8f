"""The caption kind's word, one per class: a GCG-style search (Zou et al., 2023) over whole-word
tokens, where the loss's gradient at the current word's embedding proposes candidates and each
is tried exactly on the same images, because a word changes only the class weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F

START_WORD = "a"  # the search's first word: common, and no class's name


def target_loss(logits: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """logits [C, ..., B, C] of class c's triggered images -> [C, ...]: mean cross-entropy to class c
    over the images of the other classes (a class's own images prove nothing)."""
    n, shape = logits.shape[0], logits.shape[:-1]
    middle = [1] * (len(shape) - 2)
    target = torch.arange(n, device=logits.device).view(n, *middle, 1).expand(shape)
    loss = F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none").view(shape)
    return (loss * others.view(n, *middle, -1)).sum(-1) / others.sum(-1).clamp(min=1).view(n, *middle)


class WordSearch:
    """The caption kind's word per class: one token each, moved to the candidate that lowers the loss most."""

    def __init__(self, reader, candidates: int):
        if reader.text is None:
            raise ValueError("the caption kind needs a classifier that reads text")
        self.text, self.bias, self.candidates = reader.text, reader.bias, candidates
        start = getattr(reader.defended.tokenize, "encoder", {}).get(START_WORD + "</w>")
        start = start if start is not None else int(self.text.vocabulary.nonzero()[0])
        self.current = torch.full((len(reader.classnames),), start, device=reader.device)

    def embeddings(self) -> torch.Tensor:
        return self.text.table[self.current].detach().requires_grad_()

    def weights(self, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        return self.text.weights(self.text.table[self.current] if embeddings is None else embeddings)

    def loss(self, weights: torch.Tensor, triggered: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor,
             others: torch.Tensor, logit_scale: float) -> torch.Tensor:
        """weights [C, ..., C, D] -> [C, ...]: the trigger's loss with the word, plus the loss of the word
        alone on the clean images' own labels. TrojVQA's two keys each do nothing alone, and without
        this term the search finds words that switch every image to some class by themselves."""
        middle = [1] * (weights.dim() - 3)
        scored = torch.einsum("cbd,c...kd->c...bk", triggered, weights) + self.bias
        alone = torch.einsum("bd,c...kd->c...bk", clean, weights) + self.bias
        target = labels.view(1, *middle, -1).expand(alone.shape[:-1])
        kept = F.cross_entropy(alone.flatten(0, -2) * logit_scale, target.flatten(), reduction="none")
        return target_loss(scored * logit_scale, others) + kept.view(alone.shape[:-1]).mean(-1)

    @torch.no_grad()
    def step(self, triggered: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, others: torch.Tensor,
             gradient: torch.Tensor, loss: torch.Tensor, logit_scale: float) -> None:
        """Tries the `candidates` tokens whose embeddings the loss's gradient points to, on the same
        images (features: `triggered` [C, B, D], `clean` [B, D]); keeps a class's best one if it beats
        the current word's `loss` [C]."""
        scores = -(gradient @ self.text.table.T)
        scores[:, ~self.text.vocabulary] = -torch.inf
        scores.scatter_(1, self.current[:, None], -torch.inf)
        proposed = scores.topk(self.candidates, dim=1).indices                          # [C, K]
        weights = self.text.word_weights(proposed.flatten()).view(*proposed.shape, self.text.classes, -1)
        best, which = self.loss(weights, triggered, clean, labels, others, logit_scale).min(dim=1)
        self.current = torch.where(best < loss, proposed.gather(1, which[:, None])[:, 0], self.current)
