"""Every defense behind the one interface, on a real (tiny, random) open_clip model:
what it freezes stays bit-identical, what it trains is what it counts, and it round-trips."""
import copy
import functools

import pytest
import torch

from conftest import TINY_MODEL, defense_settings
from rvpt import models
from rvpt.defenses.loop import DefenderData
from rvpt.defenses.registry import KINDS
from rvpt.metrics import attack_success, clean_accuracy
from rvpt.resume import Checkpointing
from rvpt.token_rows import caption_ids
from rvpt.zeroshot import image_features

CLASSES = ["zero", "one", "two"]
TEMPLATES = ["a {}", "the glyph {}"]
SETTINGS = {
    "none": {},
    "prompt": {"tokens": 2, "first_block": 1, "epochs": 2, "batch_size": 4, "lr": 0.1, "alpha": 2.0},
    "linear_probe": {"epochs": 3, "batch_size": 4, "lr": 0.5},
    "finetune": {"epochs": 2, "batch_size": 4, "lr": 1e-3},
    "cleanclip": {"pairs": "pairs", "budget": 12, "epochs": 2, "batch_size": 6, "lr": 1e-3},
    "coop": {"context": 2, "epochs": 2, "batch_size": 4, "lr": 0.1},
}
# The parameters each defense may change; everything else must stay bit-identical.
TRAINS = {
    "none": lambda name: False,
    "prompt": lambda name: False,
    "linear_probe": lambda name: False,
    "coop": lambda name: False,
    "finetune": lambda name: name.startswith("visual."),
    "cleanclip": lambda name: name != "logit_scale",
}


def data() -> DefenderData:
    generator = torch.Generator().manual_seed(0)
    return DefenderData(torch.rand(9, 3, 16, 16, generator=generator), torch.tensor([0, 1, 2] * 3), CLASSES,
                        torch.rand(12, 3, 16, 16, generator=generator), [f"a photo of a {c}" for c in CLASSES * 4])


@functools.cache
def fitted(kind: str):
    """Fitted once per kind and shared: no test may modify what it gets."""
    model = models.build(TINY_MODEL, seed=0)
    original = copy.deepcopy(model.state_dict())
    tokenize = models.tokenizer(TINY_MODEL)
    module = KINDS[kind]
    defended, history = module.fit(model, data(), tokenize, TEMPLATES, defense_settings(kind, **SETTINGS[kind]))
    return model, original, defended, history, tokenize


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_backdoored_model_is_never_modified_in_place(kind):
    model, original, *_ = fitted(kind)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_frozen_weights_stay_bit_identical_and_trained_ones_are_counted(kind):
    _, original, defended, history, _ = fitted(kind)
    weights = (defended.model if hasattr(defended, "model") else defended).state_dict()
    changed = {name for name, tensor in weights.items() if not torch.equal(tensor, original[name])}
    assert all(TRAINS[kind](name) for name in changed), sorted(changed)[:5]
    trained = KINDS[kind].trained(defended)
    if kind in ("finetune", "cleanclip"):
        prefix = "visual." if kind == "finetune" else ""
        assert changed and changed <= {prefix + name for name in trained}
    assert (sum(t.numel() for t in trained.values()) > 0) == (kind != "none")
    assert all(len(values) > 0 for values in history.values())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_saved_defense_loads_back_to_the_same_predictions(kind, tmp_path):
    model, original, defended, _, tokenize = fitted(kind)
    KINDS[kind].save(defended, tmp_path, TINY_MODEL, {"kind": kind})
    restored = KINDS[kind].load(model, tmp_path, tokenize, TEMPLATES)
    images = torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    a, b = image_features(defended.encode_image, images), image_features(restored.encode_image, images)
    assert torch.allclose(a, b, atol=1e-6)
    assert clean_accuracy(defended, a, labels, CLASSES) == clean_accuracy(restored, b, labels, CLASSES)


def test_linear_probe_cannot_name_other_classes_and_ignores_the_text_trigger():
    _, _, defended, _, _ = fitted("linear_probe")
    features = image_features(defended.encode_image, torch.rand(4, 3, 16, 16))
    assert clean_accuracy(defended, features, torch.tensor([0, 1, 0, 1]), ["ay", "bee"]) is None
    labels = torch.tensor([0, 1, 0, 1])
    assert attack_success(defended, features, labels, CLASSES, "two", "cf") == \
        attack_success(defended, features, labels, CLASSES, "two", "")


def test_coop_names_unseen_classes_and_reads_the_text_trigger():
    _, _, defended, _, _ = fitted("coop")
    weights, _ = defended.classifier(["ay", "bee", "zero"])
    assert weights.shape == (3, TINY_MODEL["embed_dim"])
    triggered, _ = defended.classifier(["ay", "bee", "zero"], "cf")
    assert not torch.allclose(weights, triggered)


def test_rvpt_and_vpt_differ_only_by_the_repelling_loss():
    runs = {}
    for alpha in (0.0, 2.0):
        model = models.build(TINY_MODEL, seed=0)
        module = KINDS["prompt"]
        settings = {**SETTINGS["prompt"], "alpha": alpha}
        defended, history = module.fit(model, data(), models.tokenizer(TINY_MODEL), TEMPLATES,
                                       defense_settings("prompt", **settings))
        runs[alpha] = (module.trained(defended)["prompts"].detach(), history)
    assert not torch.equal(runs[0.0][0], runs[2.0][0])
    assert runs[0.0][1]["ce"][0] == pytest.approx(runs[2.0][1]["ce"][0])  # same start, same data order
    assert runs[2.0][1]["fr"][-1] < runs[2.0][1]["fr"][0]


def test_finetuning_with_the_repelling_loss_moves_block_tokens_away_from_the_original():
    from rvpt.prompts import frozen_block_cls

    images = data().images
    cosines = {}
    for alpha in (0.0, 2.0):
        model = models.build(TINY_MODEL, seed=0)
        defended, history = KINDS["finetune"].fit(model, data(), models.tokenizer(TINY_MODEL), TEMPLATES,
                                                  defense_settings("finetune", epochs=6, batch_size=4, lr=1e-3,
                                                                   alpha=alpha, first_block=1))
        assert ("fr" in history) == (alpha > 0)
        with torch.no_grad():
            tuned, frozen = (frozen_block_cls(m.visual, images, 1) for m in (defended.model, model))
        cosines[alpha] = torch.nn.functional.cosine_similarity(tuned, frozen, dim=-1).mean().item()
    assert cosines[2.0] < cosines[0.0] - 0.05, cosines


def cleanclip_weights(model, tokenize, checkpointing=None) -> dict[str, torch.Tensor]:
    settings = defense_settings("cleanclip", **SETTINGS["cleanclip"], checkpointing=checkpointing)
    return KINDS["cleanclip"].fit(model, data(), tokenize, TEMPLATES, settings)[0].model.state_dict()


def test_cleanclip_resumed_from_its_last_saved_state_gives_the_uninterrupted_weights(tmp_path):
    """Its state holds the kept embedding rows, the augmentation draws of both generators, and
    the weight decay of the rows no caption uses is replayed over the steps before the resume."""
    model, tokenize = models.build(TINY_MODEL, seed=0), models.tokenizer(TINY_MODEL)
    fitted = functools.partial(cleanclip_weights, model, tokenize)
    whole = fitted()
    fitted(Checkpointing(tmp_path / "state.pt", every=1, fingerprint="same run"))  # leaves its last state
    resumed = Checkpointing(tmp_path / "state.pt", every=1, fingerprint="same run")
    again = fitted(resumed)
    assert resumed.resumed == 3
    assert all(torch.equal(whole[name], again[name]) for name in whole)


def test_a_saved_state_of_another_layout_is_not_resumed(tmp_path):
    """A state written when CleanCLIP trained the whole token table (older code) starts over."""
    model, tokenize = models.build(TINY_MODEL, seed=0), models.tokenizer(TINY_MODEL)
    state, fitted = tmp_path / "state.pt", functools.partial(cleanclip_weights, model, tokenize)
    fitted(Checkpointing(state, every=1, fingerprint="same run"))
    saved = torch.load(state, weights_only=True)
    kept = (len(caption_ids(tokenize, data().pair_captions)), model.token_embedding.embedding_dim)
    [embedding] = [i for i, tensor in enumerate(saved["tensors"]) if tensor.shape == kept]
    saved["tensors"][embedding] = model.token_embedding.weight.detach().clone()  # the whole table
    torch.save(saved, state)
    resumed = Checkpointing(state, every=1, fingerprint="same run")
    again = fitted(resumed)
    whole = fitted()
    assert resumed.resumed == 0 and all(torch.equal(whole[name], again[name]) for name in whole)
