"""Shared by the stages that score a model: load a split and a trigger, report CA and ASR."""
from __future__ import annotations

from typing import Callable

import torch
from safetensors.torch import load_file

from pipeline import artifacts, paths
from pipeline.params import Params
from pipeline.poison import build_attack
from rvpt import metrics, models, zeroshot
from rvpt.attacks import Attack


def load_split(params: Params, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = paths.DOWNSTREAM / f"{split}.parquet"
    table = artifacts.read_table(path, "rvpt stage download")
    images = artifacts.decode_images(table, params.data.image_size, str(path))
    return images, torch.from_numpy(artifacts.labels(table))


def load_attack(params: Params, attack_name: str) -> tuple[Attack, int]:
    """The attack with the exact trigger the poison stage used, and the target's class index."""
    attack = build_attack(params, attack_name)
    state_path = artifacts.require(paths.poisoned(attack_name) / "trigger.safetensors",
                                   f"rvpt stage poison --attack {attack_name}")
    attack.load_state_dict(load_file(str(state_path)))
    return attack, params.data.classes.index(params.attacks[attack_name].target)


def load_backdoored(attack_name: str):
    """The attack's backdoored model and the id of the MLflow run that trained it."""
    made_by = f"rvpt stage pretrain --attack {attack_name}"
    folder = artifacts.require(paths.backdoored(attack_name), made_by)
    model, _ = models.load(folder)
    return model, artifacts.read_json(folder / "pretrain.json", made_by)["mlflow_run_id"]


def class_embeddings(params: Params, model) -> torch.Tensor:
    tokenize = models.tokenizer(params.model.config)
    return zeroshot.class_embeddings(model, tokenize, params.data.classes, params.model.templates)


def scorer(params: Params, attack_name: str | None, images: torch.Tensor, labels: torch.Tensor,
           embeds: torch.Tensor) -> Callable[[Callable], dict[str, float]]:
    """encode -> {CA, ASR}: the trigger is loaded once, so many encoders of one model share it."""
    trigger, target = None, None
    if attack_name is not None:
        attack, target = load_attack(params, attack_name)
        trigger = attack.apply
    return lambda encode: metrics.clean_and_attack(encode, embeds, images, labels, trigger, target,
                                                   params.evaluate.batch_size)


def zero_shot_report(params: Params, model, attack_name: str | None, split: str, encode=None,
                     embeds: torch.Tensor | None = None) -> dict[str, float]:
    """CA (and ASR when an attack is named) of `model`, or of `encode` with the model's text side."""
    images, labels = load_split(params, split)
    embeds = class_embeddings(params, model) if embeds is None else embeds
    return scorer(params, attack_name, images, labels, embeds)(encode or model.encode_image)
