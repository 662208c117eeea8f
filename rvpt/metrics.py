"""Clean accuracy and attack success rate of a defended model, from its image features."""
from __future__ import annotations

import torch

from rvpt.defenses.base import Defended


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


@torch.no_grad()
def clean_accuracy(defended: Defended, features: torch.Tensor, labels: torch.Tensor,
                   classnames: list[str]) -> float | None:
    """Top-1 accuracy over `classnames`; None if the defense cannot name these classes."""
    classifier = defended.classifier(classnames)
    if classifier is None:
        return None
    return accuracy(defended.logits(features, classifier).argmax(-1), labels)


@torch.no_grad()
def attack_success(defended: Defended, triggered_features: torch.Tensor, labels: torch.Tensor,
                   classnames: list[str], target: str, text_trigger: str = "") -> float | None:
    """ASR of triggered images with true `labels` (indices into classnames), towards class `target`.

    When the task lacks the target class (another task's images), it is added as one more
    class. The text trigger, if any, is applied to every class prompt of a classifier that reads
    text. None if the defense cannot name these classes.
    """
    names = list(classnames) if target in classnames else [*classnames, target]
    classifier = defended.classifier(names, text_trigger if defended.reads_text else "")
    if classifier is None:
        return None
    predictions = defended.logits(triggered_features, classifier).argmax(-1)
    return attack_success_rate(predictions, labels, names.index(target))
