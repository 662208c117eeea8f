"""Clean accuracy and attack success rate, from predictions."""
from __future__ import annotations

import torch

from rvpt.zeroshot import image_features, predict


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    return (predictions == labels).float().mean().item()


def attack_success_rate(triggered_predictions: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """Share of triggered images predicted as `target`, over images whose true class is not `target`."""
    keep = labels != target
    if not keep.any():
        raise ValueError("no test image outside the target class")
    return (triggered_predictions[keep] == target).float().mean().item()


def clean_and_attack(encode, class_embeds: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                     trigger=None, target: int | None = None, batch_size: int = 512) -> dict[str, float]:
    """CA on `images`; with a trigger (any callable on [N, 3, H, W] in [0, 1]), also ASR towards `target`."""
    report = {"clean_accuracy": accuracy(predict(image_features(encode, images, batch_size), class_embeds), labels)}
    if trigger is not None:
        keep = labels != target
        triggered = trigger(images[keep])
        predictions = predict(image_features(encode, triggered, batch_size), class_embeds)
        report["attack_success_rate"] = attack_success_rate(predictions, labels[keep], target)
    return report
