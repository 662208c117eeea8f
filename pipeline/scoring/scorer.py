"""Shared by the stages that score a model: load splits, triggers and models; score a defended model.

A `Scorer` reads a split once per scored model and computes the features of its clean,
perturbed and triggered images in that one pass, then reuses them for CA, ASR, perturbation
resistivity and the nuisance-factor probes.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.store import artifacts, paths
from pipeline.config.params import Params
from pipeline.methods.attacks import load_attack
from pipeline.data.splits import Split
from rvpt import compute, metrics, models
from rvpt import diagnostics as diagnostics_lib
from rvpt.attacks import Attack
from rvpt.defenses.base import Defended, ZeroShot
from rvpt.diagnostics import LayerResistivity, OffsetShare, PixelNoise
from rvpt.images import normalize
from rvpt.prompts import frozen_block_cls
from rvpt.perturbations import KINDS, Perturber, Settings
from rvpt.world import FACTORS
from rvpt.zeroshot import Encoder, unit


def open_split(params: Params, split: str) -> Split:
    return Split(paths.DOWNSTREAM / f"{split}.parquet", params.data, "rvpt stage download")


def backdoored_run_id(attack_name: str) -> str:
    """The id of the MLflow run that trained the attack's backdoored model."""
    made_by = f"rvpt stage pretrain --attack {attack_name}"
    return artifacts.read_json(paths.backdoored(attack_name) / "pretrain.json", made_by)["mlflow_run_id"]


def load_backdoored(attack_name: str):
    """The attack's backdoored model and the id of the MLflow run that trained it."""
    folder = artifacts.require(paths.backdoored(attack_name), f"rvpt stage pretrain --attack {attack_name}")
    model, _ = models.load(folder)
    return model, backdoored_run_id(attack_name)


def factor_codes(train: list[str], test: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both splits' values of one factor as class indices over one shared vocabulary."""
    vocabulary = {value: i for i, value in enumerate(sorted(set(train) | set(test)))}
    return (torch.tensor([vocabulary[v] for v in train]), torch.tensor([vocabulary[v] for v in test]))


def zero_shot(params: Params, model) -> ZeroShot:
    return ZeroShot(model, models.tokenizer(params.model.config), params.model.templates)


@dataclass
class Features:
    """One pass over a split: features of its readable images (in order), their labels and row
    indices, of their perturbed copies, and of each attack's triggered non-target images (and,
    with diagnostics, of the same images under each attack's control trigger)."""

    clean: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    perturbed: torch.Tensor | None
    triggered: dict[str, tuple[torch.Tensor, torch.Tensor]]
    layers: dict[str, list[float]]  # layer-wise resistivity per perturbation kind (when perturbed)
    control: dict[str, tuple[torch.Tensor, torch.Tensor]]
    offset_share: list[float | None] | None  # per block, for a prompted tower (when perturbed)


class Scorer:
    """Scores defended models on one split: CA and ASR, and with `diagnostics` also resistivity,
    nuisance-probe accuracy (probes fitted on the validation split) and the transfer task.

    Splits are streamed: each scored model reads every split once, batch by batch, and the
    triggers and perturbations are applied per batch, so memory does not grow with the split.
    """

    def __init__(self, params: Params, split: str, diagnostics: bool = False):
        self.params = params
        self.classes = params.data.class_names
        self.placement = compute.placement(params.compute.device, params.compute.precision)
        self.split = open_split(params, split)
        self.diagnostics = diagnostics
        self.attacks: dict[str, Attack] = {}
        self._image_sides = weakref.WeakKeyDictionary()  # model -> (attack names, its image side)
        if diagnostics:
            self.probe_split = open_split(params, "val")
            self.transfer = {name: (open_split(params, f"{name}_test"), classes)
                             for name, classes in params.data.transfer_sets().items()}

    def attack(self, name: str) -> Attack:
        if name not in self.attacks:
            self.attacks[name] = load_attack(self.params, name).to(self.placement.device)
        return self.attacks[name]

    def control(self, name: str) -> Attack:
        """The attack's control trigger: the same kind of trigger with a pattern no model saw."""
        key = f"{name} (control)"
        if key not in self.attacks:
            self.attacks[key] = self.attack(name).control()
        return self.attacks[key]

    @torch.no_grad()
    def features(self, defended: Defended, split: Split, classes: list[str], attack_names=(),
                 perturb: bool = False) -> Features:
        """The split's features in one pass; with `perturb` (the diagnostics) also its perturbed
        images', the layer-wise resistivity, the control triggers' and a prompted tower's offset share."""
        device, size = self.placement.device, self.params.evaluate.batch_size
        encoder = lambda: Encoder(defended.encode_image, size, self.placement)  # noqa: E731
        clean, noisy = encoder(), encoder() if perturb else None
        triggered = {name: encoder() for name in attack_names}
        controls = {name: encoder() for name in attack_names} if perturb else {}
        layers = LayerPasses(self.params, defended) if perturb else None
        noise = PixelNoise(self.params.evaluate.perturbation, self.params.seed) if perturb else None
        targets = {name: self.params.attacks[name].target for name in attack_names}
        labels, index, kept = [], [], {name: [] for name in attack_names}
        for batch in split.batches(size, self.params.compute.workers, device.type == "cuda"):
            images = unit(batch.pixels, device)
            clean.add(images)
            if noisy:
                noisy.add(noise(images))
            if layers:
                layers.add(images, batch.index)
            for name, encoded in triggered.items():
                keep = batch.labels != classes.index(targets[name]) if targets[name] in classes \
                    else torch.ones_like(batch.labels, dtype=torch.bool)
                encoded.add(self.attack(name).apply(images[keep.to(device)], batch.index[keep]))
                if name in controls:
                    controls[name].add(self.control(name).apply(images[keep.to(device)], batch.index[keep]))
                kept[name].append(batch.labels[keep])
            labels.append(batch.labels)
            index.append(batch.index)
        finish = lambda encoders: {n: (e.finish(), torch.cat(kept[n])) for n, e in encoders.items()}  # noqa: E731
        return Features(clean.finish(), torch.cat(labels), torch.cat(index), noisy.finish() if noisy else None,
                        finish(triggered), layers.per_block() if layers else {}, finish(controls),
                        layers.offset_share() if layers else None)

    def attack_success(self, defended: Defended, attack_name: str, features: Features, classes) -> float | None:
        triggered, labels = features.triggered[attack_name]
        return metrics.attack_success(defended, triggered, labels, classes, self.params.attacks[attack_name].target,
                                      self.attack(attack_name).text_trigger)

    def report(self, defended: Defended, attack_name: str | None) -> dict:
        """CA, and ASR when an attack is named."""
        return self.rows(defended, [attack_name] if attack_name else [])[0]

    @torch.no_grad()
    def rows(self, defended: Defended, attack_names: list[str]) -> list[dict]:
        """One dict of metrics per attack (or one without ASR for none); the clean-image
        measurements are shared between them."""
        defended.to(self.placement.device)
        test, transfer, diagnosed = self.image_side(defended, attack_names)
        shared = {"clean_accuracy": metrics.clean_accuracy(defended, test.clean, test.labels, self.classes), **diagnosed}
        for task, (features, classes) in transfer.items():
            shared[f"{task}_clean_accuracy"] = metrics.clean_accuracy(defended, features.clean, features.labels, classes)
        rows = []
        for name in attack_names:
            row = {**shared, "attack_success_rate": self.attack_success(defended, name, test, self.classes)}
            if name in test.control:  # read an ASR against: the control trigger's, and the target's share of clean images
                row["control_attack_success_rate"] = metrics.attack_success(
                    defended, *test.control[name], self.classes, self.params.attacks[name].target,
                    self.attack(name).text_trigger)
                row["target_rate"] = metrics.attack_success(defended, test.clean, test.labels, self.classes,
                                                            self.params.attacks[name].target)
            for task, (features, classes) in transfer.items():
                row[f"{task}_attack_success_rate"] = self.attack_success(defended, name, features, classes)
            row["text_trigger_applied"] = bool(self.attack(name).text_trigger) and defended.reads_text
            rows.append(row)
        return rows or [shared]

    def image_side(self, defended: Defended, attack_names: list[str]) -> tuple[Features, dict, dict]:
        """Everything scored from the image tower alone: the split's features, the transfer
        task's, and the diagnostics. Defenses that leave the tower as it is (none, the linear
        probe, CoOp) share one computation per backdoored model; the passes and the nuisance
        probes are most of a cell's scoring."""
        shares = image_tower_untouched(defended)
        # Keyed by the model itself, held weakly: a cell with its own copy (fine-tuning, CleanCLIP)
        # does not push out the backdoored model that a later cell shares, and a freed model's
        # entry goes with it, so a later model cannot reuse its id and match.
        held = self._image_sides.get(defended.model) if shares else None
        if held is not None and held[0] == list(attack_names):
            return held[1]
        test = self.features(defended, self.split, self.classes, attack_names, perturb=self.diagnostics)
        transfer = {task: (self.features(defended, split, classes, attack_names), classes)
                    for task, (split, classes) in (self.transfer.items() if self.diagnostics else ())}
        side = (test, transfer, self.diagnose(defended, test) if self.diagnostics else {})
        if shares:
            self._image_sides[defended.model] = (list(attack_names), side)
        return side

    def diagnose(self, defended: Defended, test: Features) -> dict:
        probe = self.features(defended, self.probe_split, self.classes)
        factors = [name for name in FACTORS if name in self.split.factors and name in self.probe_split.factors]
        probes = {}
        for name in factors:
            train, held = factor_codes(self.probe_split.factors[name][probe.index].tolist(),
                                       self.split.factors[name][test.index].tolist())
            probes[name] = diagnostics_lib.probe_accuracy(probe.clean, train, test.clean, held,
                                                          self.params.evaluate.probe_steps)
        return {"resistivity": diagnostics_lib.resistivity(test.clean, test.perturbed),
                "layer_resistivity": test.layers,
                "offset_share": test.offset_share,
                "nuisance_probe_accuracy": float(np.mean(list(probes.values()))) if probes else None,
                "nuisance_probe": probes}


class LayerPasses:
    """The layer-wise diagnostics, on a split's first evaluate.layer_images images: the CLS token's
    resistivity per block under each perturbation kind and, for a tower run with prompts over its
    frozen blocks, the share of its CLS change that one offset shared by every image explains.
    The passes (one per block per kind) cost as much as the rest of the scoring together, hence the
    bounded count."""

    def __init__(self, params: Params, defended: Defended):
        self.defended, self.limit, self.seen = defended, params.evaluate.layer_images, 0
        self.autocast = compute.placement(params.compute.device, params.compute.precision).autocast
        self.perturber = Perturber(Settings(**params.evaluate.layer_perturbations.model_dump(), seed=params.seed))
        self.kinds = {kind: LayerResistivity() for kind in KINDS}
        self.offsets = OffsetShare() if type(defended).block_cls is not Defended.block_cls else None

    def add(self, images: torch.Tensor, index: torch.Tensor) -> None:
        measured = min(len(images), self.limit - self.seen)
        if measured <= 0:
            return
        self.seen += measured
        head, rows = images[:measured], index[:measured]
        with self.autocast():
            reference = self.defended.block_cls(normalize(head))
            for kind, layer in self.kinds.items():
                layer.add(reference, self.defended.block_cls(normalize(self.perturber(kind, head, rows))))
            if self.offsets is not None:  # the prompts' change against the same tower without them
                self.offsets.add(reference, frozen_block_cls(self.defended.model.visual, normalize(head), 0))

    def per_block(self) -> dict[str, list[float]]:
        return {kind: layer.per_block() for kind, layer in self.kinds.items()}

    def offset_share(self) -> list[float | None] | None:
        return None if self.offsets is None else self.offsets.per_block()


def image_tower_untouched(defended: Defended) -> bool:
    """Whether the defended model's image features are its CLIP's own (`self.model`'s)."""
    kind = type(defended)
    return kind.encode_image is Defended.encode_image and kind.block_cls is Defended.block_cls
