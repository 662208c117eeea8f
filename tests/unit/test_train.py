"""Contrastive training that updates only the token-embedding rows the captions use gives the
weights that training the whole 49,408-row table gives, bit for bit."""
import contextlib

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from rvpt import models
from rvpt.images import to_unit_tensor
from rvpt.resume import Checkpointing
from rvpt.token_rows import UsedRows, caption_ids
from rvpt.train import ClipTrainConfig, _train, train_clip
from rvpt.world import GlyphWorld


def corpus(n=32):
    world = GlyphWorld(["zero", "one", "two"], image_size=16)
    rng = np.random.default_rng(0)
    samples = [world.sample(rng) for _ in range(n)]
    images = to_unit_tensor(np.stack([s.image for s in samples]))
    return images, models.tokenizer(TINY_MODEL)([s.caption for s in samples])


def test_training_the_used_rows_equals_training_the_whole_table():
    images, tokens = corpus()
    config = ClipTrainConfig(steps=8, batch_size=16, warmup=2, lr=0.01)
    whole, used = models.build(TINY_MODEL, seed=0), models.build(TINY_MODEL, seed=0)
    before = whole.token_embedding.weight.detach().clone()
    losses_whole, _ = _train(whole, images, tokens, config, "whole", None, None)
    losses_used, _ = train_clip(used, images, tokens, config)

    assert losses_whole == losses_used
    assert whole.state_dict().keys() == used.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), used.state_dict().values()))
    changed = (used.token_embedding.weight != before).any(dim=1)
    assert changed.sum() > 0 and set(changed.nonzero().flatten().tolist()) <= set(torch.unique(tokens).tolist())


def test_a_training_state_saved_with_the_whole_table_is_not_resumed(tmp_path):
    images, tokens = corpus()
    config = ClipTrainConfig(steps=4, batch_size=16, warmup=1)
    old = models.build(TINY_MODEL, seed=0)
    state = tmp_path / "state.pt"
    checkpointing = Checkpointing(state, every=2, fingerprint="same settings")
    _train(old, images, tokens, config, "old layout", checkpointing, None)
    assert torch.load(state, weights_only=True)["step"] == 2

    resumed = Checkpointing(state, every=2, fingerprint="same settings")
    fresh = models.build(TINY_MODEL, seed=0)
    losses, start = train_clip(fresh, images, tokens, config, checkpointing=resumed)
    reference = models.build(TINY_MODEL, seed=0)
    assert start == 0 and resumed.resumed == 0 and losses == train_clip(reference, images, tokens, config)[0]


def test_a_frozen_tower_keeps_every_weight_and_the_other_tower_trains():
    images, tokens = corpus()
    start = models.build(TINY_MODEL, seed=0).state_dict()
    for frozen, fixed in (("image", lambda name: name.startswith("visual.")),
                          ("text", lambda name: not name.startswith(("visual.", "logit_")))):
        model = models.build(TINY_MODEL, seed=0)
        train_clip(model, images, tokens, ClipTrainConfig(steps=4, batch_size=16, warmup=1, lr=0.01, frozen=frozen))
        moved = {name for name, value in model.state_dict().items() if not torch.equal(value, start[name])}
        assert moved and not any(fixed(name) for name in moved), frozen
        assert "logit_scale" in moved
        assert any(fixed(name) for name in start) and all(name in moved for name in start
                                                          if not fixed(name) and name.endswith("weight")
                                                          and "token_embedding" not in name), frozen


def test_adamw_on_the_used_rows_with_their_weight_decay_replayed_equals_the_whole_table():
    captions = ["a photo of a zero", "the glyph one tilted left with a small two", "two"]
    tokenize, lrs = models.tokenizer(TINY_MODEL), [0.02, 0.005, 0.01, 0.001]

    def trained(used: bool):
        model = models.build(TINY_MODEL, seed=0)
        rows = UsedRows(model, caption_ids(tokenize, captions)) if used else contextlib.nullcontext()
        with rows:
            optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
            for lr in lrs:
                optimizer.param_groups[0]["lr"] = lr
                tokens = rows.renumber(tokenize(captions)) if used else tokenize(captions)
                optimizer.zero_grad(set_to_none=True)
                model.encode_text(tokens).square().mean().backward()
                optimizer.step()
            if used:
                rows.decays = [1 - lr * 0.1 for lr in lrs]
        return model.state_dict()

    whole, used = trained(False), trained(True)
    assert all(torch.equal(whole[name], used[name]) for name in whole)
    assert not torch.equal(whole["token_embedding.weight"], models.build(TINY_MODEL, seed=0).token_embedding.weight)


def test_a_token_outside_the_kept_rows_is_refused():
    model = models.build(TINY_MODEL, seed=0)
    tokenize = models.tokenizer(TINY_MODEL)
    with UsedRows(model, caption_ids(tokenize, ["a zero"])) as rows, pytest.raises(ValueError, match="outside"):
        rows.renumber(tokenize(["a seven"]))
