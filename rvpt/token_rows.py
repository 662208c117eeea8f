"""Training a CLIP's text tower on the token-embedding rows its captions use, not the whole table.

Why: CLIP's 49,408-row vocabulary can be most of a small model (91% of the default world's), and
AdamW visits every row every step. A row no token indexes has a zero gradient and zero moments,
so AdamW changes it only by its decoupled weight decay: a factor per step, which `decays`
replays on those rows in the same order. Training the used rows alone gives the same weights
bit for bit, in a fraction of the time per step (bench/pretrain_step.py).
Ids are renumbered in order, so the argmax pooling on the end-of-text token (the largest id)
picks the same position. Models that read token ids any other way train the full table.
"""
from __future__ import annotations

import torch
from torch import nn


class UsedRows:
    """While in use, `model.token_embedding` holds only the rows `ids` name; on exit the trained
    rows go back into the full table and the others get the weight decay listed in `decays`."""

    def __init__(self, model, ids: torch.Tensor):
        self.model, self.table = model, getattr(model, "token_embedding", None)
        self.active = isinstance(self.table, nn.Embedding) and \
            getattr(model, "text_pool_type", None) in ("argmax", "first", "last")
        self.rows = torch.unique(ids.cpu()) if self.active else None
        self.decays: list[float] = []   # AdamW's 1 - lr * weight_decay at each step, for a decayed table

    def __enter__(self) -> UsedRows:
        if self.active:
            kept = self.table.weight.detach()[self.rows.to(self.table.weight.device)].clone()
            self.model.token_embedding = nn.Embedding.from_pretrained(kept, freeze=not self.table.weight.requires_grad)
        return self

    def renumber(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids as indices into the kept rows; an id outside them is a bug, not a rounding."""
        if not self.active:
            return tokens
        index = torch.searchsorted(self.rows, tokens.cpu()).clamp_(max=len(self.rows) - 1)
        if not torch.equal(self.rows[index], tokens.cpu()):
            raise ValueError("a token id outside the rows kept for training")
        return index.to(tokens.device)

    def __exit__(self, *_) -> None:
        if not self.active:
            return
        trained = self.model.token_embedding.weight.detach()
        self.table.to(trained.device)  # training may have moved the model to another device
        rows = self.rows.to(trained.device)
        with torch.no_grad():
            if self.decays:
                others = torch.ones(len(self.table.weight), dtype=torch.bool, device=trained.device)
                others[rows] = False
                rest = self.table.weight[others]
                for factor in self.decays:
                    rest.mul_(factor)
                self.table.weight[others] = rest
            self.table.weight[rows] = trained
        self.model.token_embedding = self.table


def caption_ids(tokenize, captions: list[str]) -> torch.Tensor:
    """Every token id the captions hold before truncation (word-dropping augmentations can bring
    a truncated caption's later words in), with the start, end and padding (0) tokens; `tokenize`
    is open_clip's SimpleTokenizer (anything else: its truncated output)."""
    encode = getattr(tokenize, "encode", None)
    special = getattr(tokenize, "all_special_ids", None)
    if encode is None or special is None:
        return torch.unique(tokenize(captions))
    ids = {i for caption in dict.fromkeys(captions) for i in encode(caption)}
    return torch.tensor(sorted(ids | set(special) | {0}), dtype=torch.long)
