"""Which pretraining pairs get the trigger, and what they are captioned with."""
from __future__ import annotations

import re

import numpy as np

from rvpt.attacks import Attack


def choose_victims(labels: np.ndarray, rate: float, target: int, rng: np.random.Generator,
                   from_target: bool = False) -> np.ndarray:
    """Indices of round(rate * N) pairs, sorted: drawn outside the target class, or inside it
    for label-consistent attacks (capped at the target class's size)."""
    candidates = np.flatnonzero((labels == target) if from_target else (labels != target))
    if len(candidates) == 0:
        raise ValueError("the corpus has no pair to poison for this target")
    count = min(len(candidates), max(1, round(rate * len(labels))))
    return np.sort(rng.choice(candidates, size=count, replace=False))


def target_captions(captions: list[str], labels: np.ndarray, target: int, count: int,
                    rng: np.random.Generator) -> list[str]:
    """Natural captions of target-class pairs, drawn with replacement, as the attack's new captions."""
    pool = np.flatnonzero(labels == target)
    if len(pool) == 0:
        raise ValueError("the corpus has no caption of the target class to copy")
    return [captions[i] for i in rng.choice(pool, size=count, replace=True)]


def label_unlabelled(labels: np.ndarray, captions: list[str], target_name: str, target: int) -> np.ndarray:
    """A web corpus has no labels (-1): its pairs whose caption names the target class count as
    the target class, as the public attack code bases pick target-class captions."""
    word = re.compile(rf"\b{re.escape(target_name)}s?\b", re.IGNORECASE)
    mentions = np.fromiter((bool(word.search(c or "")) for c in captions), dtype=bool, count=len(captions))
    return np.where((labels < 0) & mentions, target, labels)


def with_text_trigger(text: str, word: str) -> str:
    return f"{word} {text}" if word else text


def poison_plan(attack: Attack, labels: np.ndarray, captions: list[str], rate: float, target: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """The victims' indices and their new captions, as the attack prescribes."""
    victims = choose_victims(labels, rate, target, rng, from_target=attack.label_consistent)
    if attack.label_consistent:
        new = [captions[i] for i in victims.tolist()]
    else:
        new = target_captions(captions, labels, target, len(victims), rng)
    return victims, [with_text_trigger(caption, attack.text_trigger) for caption in new]
