"""Shared by the stages that score a model: load splits, triggers and models; score a defended model.

A `Scorer` holds one split's images and computes each model's features once, then reuses them
for CA, ASR, perturbation resistivity and the nuisance-factor probes.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import artifacts, paths
from pipeline.params import Params
from pipeline.poison import build_attack
from rvpt import diagnostics as diagnostics_lib
from rvpt import metrics, models
from rvpt.checkpoint import read_safetensors
from rvpt.attacks import Attack
from rvpt.defenses import Defended, ZeroShot
from rvpt.errors import BadInput
from rvpt.world import FACTORS
from rvpt.zeroshot import image_features


def load_split(params: Params, split: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[str]]]:
    """Images, labels, and each nuisance factor's values."""
    path = paths.DOWNSTREAM / f"{split}.parquet"
    table = artifacts.read_table(path, "rvpt stage download")
    images, kept = artifacts.decode_images(table, params.data, str(path))
    table = table.take(kept)
    factors = {name: table.column(f"factor_{name}").to_pylist() for name in FACTORS
               if f"factor_{name}" in table.column_names}
    return images, torch.from_numpy(artifacts.labels(table)), factors


def load_attack(params: Params, attack_name: str) -> Attack:
    """The attack with the exact trigger the poison stage used."""
    attack = build_attack(params, attack_name)
    state_path = artifacts.require(paths.poisoned(attack_name) / "trigger.safetensors",
                                   f"rvpt stage poison --attack {attack_name}")
    try:
        attack.load_state_dict(read_safetensors(state_path)[0])
    except (ValueError, KeyError, RuntimeError) as error:
        raise BadInput(f"{state_path}: {error}") from None
    return attack


def load_backdoored(attack_name: str):
    """The attack's backdoored model and the id of the MLflow run that trained it."""
    made_by = f"rvpt stage pretrain --attack {attack_name}"
    folder = artifacts.require(paths.backdoored(attack_name), made_by)
    model, _ = models.load(folder)
    return model, artifacts.read_json(folder / "pretrain.json", made_by)["mlflow_run_id"]


def factor_codes(train: list[str], test: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both splits' values of one factor as class indices over one shared vocabulary."""
    vocabulary = {value: i for i, value in enumerate(sorted(set(train) | set(test)))}
    return (torch.tensor([vocabulary[v] for v in train]), torch.tensor([vocabulary[v] for v in test]))


def zero_shot(params: Params, model) -> ZeroShot:
    return ZeroShot(model, models.tokenizer(params.model.config), params.model.templates)


class Scorer:
    """Scores defended models on one split: CA and ASR, and with `diagnostics` also resistivity,
    nuisance-probe accuracy (probes fitted on the validation split) and the transfer task."""

    def __init__(self, params: Params, split: str, diagnostics: bool = False):
        self.params = params
        self.classes = params.data.class_names
        self.images, self.labels, self.factors = load_split(params, split)
        self.diagnostics = diagnostics
        self.attacks: dict[str, Attack] = {}
        self.triggered: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        if diagnostics:
            # Everything that does not depend on the model is prepared once, not per scored model.
            self.perturbed = diagnostics_lib.perturb(self.images, params.evaluate.perturbation, params.seed)
            self.probe_images, _, probe_factors = load_split(params, "val")
            self.probe_targets = {name: factor_codes(probe_factors[name], self.factors[name])
                                  for name in FACTORS if name in self.factors and name in probe_factors}
            self.transfer = {name: (*load_split(params, f"{name}_test")[:2], classes)
                             for name, classes in params.data.transfer_sets().items()}

    def features(self, defended: Defended, images: torch.Tensor) -> torch.Tensor:
        return image_features(defended.encode_image, images, self.params.evaluate.batch_size)

    def triggered_images(self, attack_name: str, task: str, images: torch.Tensor, labels: torch.Tensor,
                         target: int | None):
        """The task's non-target images with the trigger, computed once per attack and task."""
        if (attack_name, task) not in self.triggered:
            if attack_name not in self.attacks:
                self.attacks[attack_name] = load_attack(self.params, attack_name)
            keep = labels != target if target is not None else torch.ones_like(labels, dtype=torch.bool)
            self.triggered[attack_name, task] = self.attacks[attack_name].apply(images[keep]), labels[keep]
        return self.triggered[attack_name, task]

    def attack_success(self, defended, attack_name, task, images, labels, classes) -> float | None:
        spec = self.params.attacks[attack_name]
        target = classes.index(spec.target) if spec.target in classes else None
        triggered, kept = self.triggered_images(attack_name, task, images, labels, target)
        attack = self.attacks[attack_name]
        return metrics.attack_success(defended, self.features(defended, triggered), kept, classes, spec.target,
                                      attack.text_trigger)

    def report(self, defended: Defended, attack_name: str | None) -> dict:
        """CA, and ASR when an attack is named."""
        return self.rows(defended, [attack_name] if attack_name else [])[0]

    @torch.no_grad()
    def rows(self, defended: Defended, attack_names: list[str]) -> list[dict]:
        """One dict of metrics per attack (or one without ASR for none); the clean-image
        measurements are shared between them."""
        clean = self.features(defended, self.images)
        shared = {"clean_accuracy": metrics.clean_accuracy(defended, clean, self.labels, self.classes)}
        if self.diagnostics:
            shared.update(self.diagnose(defended, clean))
        rows = []
        for name in attack_names:
            row = {**shared, "attack_success_rate": self.attack_success(defended, name, "task", self.images,
                                                                        self.labels, self.classes)}
            for task, (images, labels, classes) in (self.transfer.items() if self.diagnostics else ()):
                row[f"{task}_attack_success_rate"] = self.attack_success(defended, name, task, images, labels,
                                                                         classes)
            row["text_trigger_applied"] = bool(self.attacks[name].text_trigger) and defended.reads_text
            rows.append(row)
        return rows or [shared]

    def diagnose(self, defended: Defended, clean: torch.Tensor) -> dict:
        perturbed = self.features(defended, self.perturbed)
        probe_features = self.features(defended, self.probe_images)
        probes = {name: diagnostics_lib.probe_accuracy(probe_features, train, clean, test,
                                                       self.params.evaluate.probe_steps)
                  for name, (train, test) in self.probe_targets.items()}
        out = {"resistivity": diagnostics_lib.resistivity(clean, perturbed),
               "nuisance_probe_accuracy": float(np.mean(list(probes.values()))) if probes else None,
               "nuisance_probe": probes}
        for task, (images, labels, classes) in self.transfer.items():
            out[f"{task}_clean_accuracy"] = metrics.clean_accuracy(defended, self.features(defended, images),
                                                                   labels, classes)
        return out
