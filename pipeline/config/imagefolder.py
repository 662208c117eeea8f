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
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import sources
from pipeline.config.profiles import folder_classes, merge
from rvpt import models
from rvpt import pretrained as pretrained_weights
from rvpt.defenses.registry import KINDS, DataShape, adapt
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


@dataclass
class Tree:
    """The user's tree as the profile reads it: classes (folder -> name), images per class in each
    split, the corpus's per class (None: root/train is the corpus) and its split folder."""

    root: Path
    classes: dict[str, str]
    train: list[int]
    test: list[int]
    val: list[int] | None
    corpus: Path | None
    corpus_counts: list[int] | None
    corpus_split: str | None

    @classmethod
    def read(cls, root: Path, corpus: Path | None) -> "Tree":
        root = root.resolve()
        classes = folder_classes(root / "train", "--root (its train/ folder)")
        folders = list(classes)
        val = per_class(root, "val", folders, "--root") if (root / "val").is_dir() else None
        split = "train" if corpus is None or (corpus / "train").is_dir() else None
        counts = per_class(corpus.resolve(), split, folders, "--corpus") if corpus else None
        tree = cls(root, classes, per_class(root, "train", folders, "--root"), per_class(root, "test", folders, "--root"),
                   val, corpus.resolve() if corpus else None, counts, split)
        if min(tree.train) < 2 or min(tree.test) < 1:
            raise BadInput(f"--root {root}: every class needs 2 or more train/ images and 1 or more test/ images")
        return tree

    def sizes(self) -> dict[str, int]:
        """Downstream train and val images per class, and the corpus pool it leaves (with its pairs)."""
        split = max(1, min(MAX_SPLIT, min(self.train) // SPLIT_SHARE))
        val = min(MAX_SPLIT, min(self.val)) if self.val else split
        held = len(self.classes) * (split + (0 if self.val else val))
        pool = sum(self.corpus_counts) if self.corpus else sum(self.train) - held
        if pool < 10:
            raise BadInput(f"--root {self.root}: {pool} train/ images are left for the pretraining corpus after the "
                           f"downstream splits; give a corpus with --corpus")
        pairs = pool // PAIRS_SHARE
        return {"split": split, "val": val, "pool": pool, "pairs": pairs, "corpus": max(1, pool - pairs)}


def data_section(tree: Tree, sizes: dict[str, int], side: int) -> dict:
    return {"source": "files", "classes": tree.classes, "transfer_classes": [], "concepts": [], "distractors": 0,
            "noise": 0.0, "stickers": 0.0, "shift": {"distractors": None, "noise": None}, "image_size": side,
            "max_offset": 0, "corpus_size": sizes["corpus"], "defender_pairs": sizes["pairs"],
            "train_per_class": sizes["split"], "val_per_class": sizes["val"],
            "test_per_class": min(MAX_TEST, min(tree.test)),
            "files": {"corpus": {"path": str(tree.corpus or tree.root), "format": "image_folder",
                                 "split": tree.corpus_split},
                      "downstream": {"path": str(tree.root), "train": "train", "val": "val" if tree.val else None,
                                     "test": "test"},
                      "transfer": {}}}


def pretrain_steps(merged: dict, corpus_size: int) -> int:
    """Schedules sized to the corpus: EPOCHS passes from scratch, a POISON_SHARE of it poisoned."""
    batch = min(128, corpus_size)
    steps = max(10, math.ceil(EPOCHS * corpus_size / batch))
    merged["pretrain"] = merge(merged["pretrain"], {
        "clean": {"steps": steps, "batch_size": max(2, batch), "warmup": steps // 20},
        "poisoned": {"steps": max(2, steps // POISON_SHARE), "batch_size": max(2, batch),
                     "warmup": steps // POISON_SHARE // 20}})
    return steps


def fitted_methods(merged: dict, shape: DataShape, corpus_size: int) -> None:
    """Each defense's settings adapted to the data and the model (its `adapt`), and each attacker's
    image count to the corpus."""
    for block in merged["defenses"].values():
        module = KINDS.get(block.get("kind"))  # anything else is left for validation to name
        if module is not None:
            block.update(adapt(module, block, shape))
    for attack in merged["attacks"].values():
        if attack.get("optimise"):
            attack["optimise"]["images"] = min(attack["optimise"]["images"], corpus_size)


def model_section(merged: dict, model_name: str | None, pretrained: str | None) -> dict:
    """The model block for --model (or the one params.yaml has, with the profile's templates); its config."""
    if model_name is None:
        merged["model"]["templates"] = TEMPLATES
        return merged["model"]["config"] or models.named_config(merged["model"]["name"])
    config = models.named_config(model_name)
    if config is None:
        raise BadInput(f"--model {model_name!r}: not an open_clip model (see open_clip.list_models())")
    merged["model"] = {"name": model_name, "pretrained": pretrained, "config": None, "templates": TEMPLATES}
    return config


def fill(root: Path, corpus: Path | None, model_name: str | None, pretrained: str | None, target: str | None,
         attacks: list[str] | None, defenses: list[str] | None):
    """The function that turns the merged params into the user's: checked against the tree first."""
    tree = Tree.read(root, corpus)
    if target is not None and target not in tree.classes.values() and target not in tree.classes:
        raise BadInput(f"--target {target!r}: not a class folder of {tree.root / 'train'}")
    if pretrained is not None and model_name is None:
        raise BadInput("--pretrained needs --model")
    if pretrained is not None and Path(pretrained).expanduser().exists():
        check_weights(model_name, pretrained)
    notes: list[str] = []

    def apply(merged: dict) -> dict:
        old = vision(merged["model"]["config"] or models.named_config(merged["model"]["name"]))
        side, patch = vision(model_section(merged, model_name, pretrained))
        sizes = tree.sizes()
        merged["data"].update(data_section(tree, sizes, side))
        merged["target"] = tree.classes.get(target, target) if target else list(tree.classes.values())[-1]
        scaled_sizes(merged["attacks"], old, (side, patch))
        steps = pretrain_steps(merged, sizes["corpus"])
        merged["sample"]["shots"] = shots = min(merged["sample"]["shots"], sizes["split"])
        grid = (side // patch) ** 2 if patch else None
        fitted_methods(merged, DataShape(grid, sizes["pairs"], shots * len(tree.classes)), sizes["corpus"])
        merged["run"] = {"attacks": attacks or merged["run"]["attacks"], "defenses": defenses or merged["run"]["defenses"]}
        notes.extend(profile_notes(tree, sizes, steps, pretrained, side, grid, merged["target"]))
        return merged

    return apply, notes


def profile_notes(tree: Tree, sizes: dict, steps: int, pretrained: str | None, side: int, grid: int | None,
                  target: str) -> list[str]:
    """The lines at the top of the written params.yaml: how each derived size was derived."""
    corpus = "--corpus" if tree.corpus else "train/"
    batch = min(128, sizes["corpus"])
    return [
        f"data: {sizes['split']} train and {sizes['val']} val images per class for the downstream task, the other "
        f"{sizes['pool']} {corpus} images for the corpus ({sizes['corpus']}) and the defender's pairs "
        f"({sizes['pairs']}); `download` drops corpus images that are also downstream images (same content hash)",
        f"pretrain.clean.steps: {steps} = {EPOCHS} passes over {sizes['corpus']} pairs at batch {batch}; "
        f"pretrain.poisoned.steps: a fifth of it" + (" (model.pretrained: the clean model is taken, not trained)"
                                                      if pretrained else ""),
        f"image_size {side} from the model; prompts b = {grid} (one per patch token); patch-trigger sizes keep "
        f"their width in patches" if grid else f"image_size {side} from the model",
        f"target: {target}, shared by every attack"]
