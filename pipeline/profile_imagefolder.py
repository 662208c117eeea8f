"""`rvpt profile imagefolder`: params.yaml for the user's own ImageFolder data.

root/train/<class>/* and root/test/<class>/* (and root/val/<class>/* when there is one) are the
downstream task. The pretraining corpus is root/train captioned with model.templates, or a
separate ImageFolder (--corpus) with the same class folders; `download` leaves every downstream
image out of the corpus by content hash. Everything that depends on the data or the model is
derived here: the classes, the image size, the split and corpus sizes, the prompt count, the
trigger sizes and the pretraining steps.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline import sources
from pipeline.profile import folder_classes, merge
from rvpt import models
from rvpt import pretrained as pretrained_weights
from rvpt.errors import BadInput

MAX_SPLIT = 100         # downstream train / val images per class: enough for 16 shots and for choosing settings
MAX_TEST = 1000         # test images per class: scoring cost grows with it, the CA's precision barely
SPLIT_SHARE = 5         # train and val take a fifth of each class's train/ images each; the corpus the rest
PAIRS_SHARE = 5         # a fifth of the corpus pool becomes the defender's clean pairs (CleanCLIP)
EPOCHS = 6.4            # passes over the corpus when pretraining from scratch: the glyph world's 2,000 x 128 / 40,000
POISON_SHARE = 5        # the victim's poisoned fine-tuning runs a fifth of the clean steps, as in the glyph world
TEMPLATES = ["a photo of a {}.", "a {}."]


def per_class(root: Path, split: str | None, folders: list[str], flag: str) -> list[int]:
    """Image files in each class folder of root/<split>/."""
    base = root / split if split else root
    missing = [f for f in folders if not (base / f).is_dir()]
    if missing:
        raise BadInput(f"{flag} {root}: {base.name}/ has no class folder {missing[0]!r} (it needs train/'s classes)")
    return [len(sources.image_files(base / f, root)) for f in folders]


def vision(config: dict) -> tuple[int, int | None]:
    """(image side, patch side; None for an image tower without patches)."""
    cfg = config.get("vision_cfg") or {}
    side = cfg["image_size"][0] if isinstance(cfg["image_size"], (list, tuple)) else cfg["image_size"]
    return int(side), None if cfg.get("timm_model_name") else cfg.get("patch_size")


def scaled_sizes(attacks: dict, old: tuple[int, int | None], new: tuple[int, int | None]) -> None:
    """Each patch trigger keeps its width in ViT patches: 3 px on a 4 px patch at 16 px stays 3/4 of a patch."""
    (old_side, old_patch), (new_side, new_patch) = old, new
    if not (old_patch and new_patch):
        return
    for attack in attacks.values():
        options = attack.get("options") or {}
        if "size" in options:
            options["size"] = round(options["size"] * old_side / old_patch * new_patch / new_side, 4)


def check_weights(model_name: str, pretrained: str) -> None:
    """Local weights are read now, as the pipeline will read them (never unpickled), so that a file
    that is not the model's weights is refused here rather than by every stage later. An open_clip
    tag is resolved when `pretrain --clean` takes it, where it may be placed in the cache later."""
    config = models.named_config(model_name)
    if config is None:
        raise BadInput(f"--model {model_name!r}: not an open_clip model (see open_clip.list_models())")
    models.from_weights(config, pretrained_weights.weights_file(model_name, pretrained), f"--model {model_name}")


def fill(root: Path, corpus: Path | None, model_name: str | None, pretrained: str | None, target: str | None,
         attacks: list[str] | None, defenses: list[str] | None):
    """The function that turns the merged params into the user's: checked against the tree first."""
    root = root.resolve()
    train = root / "train"
    classes = folder_classes(train, "--root (its train/ folder)")
    folders = list(classes)
    names = list(classes.values())
    train_counts = per_class(root, "train", folders, "--root")
    test_counts = per_class(root, "test", folders, "--root")
    val_counts = per_class(root, "val", folders, "--root") if (root / "val").is_dir() else None
    corpus_split = "train" if corpus is None or (corpus / "train").is_dir() else None
    corpus_counts = per_class(corpus.resolve(), corpus_split, folders, "--corpus") if corpus else None
    if min(train_counts) < 2 or min(test_counts) < 1:
        raise BadInput(f"--root {root}: every class needs 2 or more train/ images and 1 or more test/ images")
    if target is not None and target not in names and target not in folders:
        raise BadInput(f"--target {target!r}: not a class folder of {train}")
    if pretrained is not None and model_name is None:
        raise BadInput("--pretrained needs --model")
    if pretrained is not None and Path(pretrained).expanduser().exists():
        check_weights(model_name, pretrained)

    notes: list[str] = []

    def apply(merged: dict) -> dict:
        old = vision(merged["model"]["config"] or models.named_config(merged["model"]["name"]))
        if model_name is not None:
            config = models.named_config(model_name)
            if config is None:
                raise BadInput(f"--model {model_name!r}: not an open_clip model (see open_clip.list_models())")
            merged["model"] = {"name": model_name, "pretrained": pretrained, "config": None, "templates": TEMPLATES}
        else:
            config = merged["model"]["config"] or models.named_config(merged["model"]["name"])
            merged["model"]["templates"] = TEMPLATES
        side, patch = vision(config)
        least = min(train_counts)
        split = max(1, min(MAX_SPLIT, least // SPLIT_SHARE))
        val = min(MAX_SPLIT, min(val_counts)) if val_counts else split
        held = len(folders) * (split + (0 if val_counts else val))
        pool = sum(corpus_counts) if corpus else sum(train_counts) - held
        if pool < 10:
            raise BadInput(f"--root {root}: {pool} train/ images are left for the pretraining corpus after the "
                           f"downstream splits; give a corpus with --corpus")
        pairs = pool // PAIRS_SHARE
        corpus_size = max(1, pool - pairs)
        data = merged["data"]
        data.update({"source": "files", "classes": classes, "transfer_classes": [], "concepts": [], "distractors": 0,
                     "noise": 0.0, "stickers": 0.0, "shift": {"distractors": None, "noise": None},
                     "image_size": side, "max_offset": 0, "corpus_size": corpus_size,
                     "defender_pairs": pairs, "train_per_class": split, "val_per_class": val,
                     "test_per_class": min(MAX_TEST, min(test_counts))})
        corpus_root = corpus.resolve() if corpus else root
        data["files"] = {"corpus": {"path": str(corpus_root), "format": "image_folder", "split": corpus_split},
                         "downstream": {"path": str(root), "train": "train", "val": "val" if val_counts else None,
                                        "test": "test"},
                         "transfer": {}}
        merged["target"] = classes.get(target, target) if target else names[-1]
        scaled_sizes(merged["attacks"], old, (side, patch))
        batch = min(128, corpus_size)
        steps = max(10, math.ceil(EPOCHS * corpus_size / batch))
        merged["pretrain"] = merge(merged["pretrain"], {
            "clean": {"steps": steps, "batch_size": max(2, batch), "warmup": steps // 20},
            "poisoned": {"steps": max(2, steps // POISON_SHARE), "batch_size": max(2, batch),
                         "warmup": steps // POISON_SHARE // 20}})
        shots = min(merged["sample"]["shots"], split)
        merged["sample"]["shots"] = shots
        grid = (side // patch) ** 2 if patch else None
        for defense in merged["defenses"].values():
            if defense.get("kind") == "prompt" and grid:
                defense["tokens"] = grid  # b = one prompt per patch token, as the paper's b = 50 at 7 x 7 + 1
            if defense.get("kind") == "cleanclip":
                defense["budget"] = min(defense["budget"], pairs) if pairs else defense["budget"]
                defense["pairs"] = "pairs" if pairs else "fewshot"
            if "batch_size" in defense and defense.get("kind") != "cleanclip":
                defense["batch_size"] = min(defense["batch_size"], shots * len(folders))
        for attack in merged["attacks"].values():
            if attack.get("optimise"):
                attack["optimise"]["images"] = min(attack["optimise"]["images"], corpus_size)
        merged["run"] = {"attacks": attacks or merged["run"]["attacks"],
                         "defenses": defenses or merged["run"]["defenses"]}
        notes.extend([
            f"data: {split} train and {val} val images per class for the downstream task, the other {pool} "
            f"{'--corpus' if corpus else 'train/'} images for the corpus ({corpus_size}) and the defender's pairs "
            f"({pairs}); `download` drops corpus images that are also downstream images (same content hash)",
            f"pretrain.clean.steps: {steps} = {EPOCHS} passes over {corpus_size} pairs at batch {batch}; "
            f"pretrain.poisoned.steps: a fifth of it" + (" (model.pretrained: the clean model is taken, not trained)"
                                                          if pretrained else ""),
            f"image_size {side} from the model; prompts b = {grid} (one per patch token); patch-trigger sizes keep "
            f"their width in patches" if grid else f"image_size {side} from the model",
            f"target: {merged['target']}, shared by every attack"])
        return merged

    return apply, notes
