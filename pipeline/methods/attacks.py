"""Each attack as params.yaml configures it: the one place its options become an rvpt Attack (for
the stage that poisons with it and the stages that score its trigger), and what an attacker that
trains its trigger or edits weights reaches: the corpus and the clean model (rvpt's Attacker)."""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from pipeline.config.params import Params
from pipeline.store import artifacts, paths
from rvpt import attacks, models, poisoning
from rvpt.checkpoint import read_safetensors
from rvpt.errors import BadInput
from rvpt.zeroshot import class_embeddings


def build_attack(params: Params, name: str) -> attacks.Attack:
    spec = params.attacks[name]
    options = {"seed": params.seed, **spec.options}
    try:
        return attacks.build(spec.kind, params.data.image_size, **options)
    except (TypeError, ValueError) as error:
        raise BadInput(f"params.yaml: attacks.{name}.options: {error}") from None


def load_attack(params: Params, name: str) -> attacks.Attack:
    """The attack with the exact trigger the poison stage used."""
    attack = build_attack(params, name)
    state_path = artifacts.require(paths.poisoned(name) / "trigger.safetensors", f"rvpt stage poison --attack {name}")
    try:
        attack.load_state_dict(read_safetensors(state_path)[0])
    except (ValueError, KeyError, RuntimeError) as error:
        raise BadInput(f"{state_path}: {error}") from None
    return attack


def kind_of(params: Params, name: str) -> type[attacks.Attack]:
    """The attack's class, whose attributes say what it does (trains a trigger, edits weights...)."""
    return attacks.REGISTRY[params.attacks[name].kind]


def training(params: Params, name: str) -> attacks.TriggerTraining | None:
    """What the attacker trains first, as params.yaml's `optimise` block sets it (None: nothing)."""
    spec = params.attacks[name].optimise
    return None if spec is None else attacks.TriggerTraining(**spec.settings(), seed=params.seed)


class CorpusAttacker:
    """What an attacker reaches (rvpt.attacks.Attacker): the clean corpus and the clean model.

    Its labels are the corpus's, with the unlabelled pairs (a web corpus's) whose caption names the
    target counted as the target, as the public attack code bases pick target-class captions."""

    def __init__(self, params: Params, name: str):
        self.params, self.seed = params, params.seed
        self.table = artifacts.read_table(paths.CORPUS, "rvpt stage download")
        target_name = params.attacks[name].target
        self.target = params.data.class_names.index(target_name)
        self.labels = poisoning.label_unlabelled(artifacts.labels(self.table), self.table.column("caption").to_pylist(),
                                                 target_name, self.target)

    def clean_model(self):
        return self._clean

    @cached_property
    def _clean(self):
        return models.load(artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean"))[0]

    def images(self, rows: np.ndarray) -> torch.Tensor:
        return artifacts.decode_images(self.table.take(rows), self.params.data, str(paths.CORPUS))[0]

    def captions(self, rows: np.ndarray) -> list[str]:
        column = self.table.column("caption")
        return [column[int(i)].as_py() for i in rows]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return models.tokenizer(self.params.model.config)(texts)

    def sample(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` random corpus images, drawn from the seed (the same for every stage that asks),
        and their downstream class indices, -1 where an image shows none (a corpus-only concept,
        or a web corpus's unlabelled pair)."""
        rows = np.sort(np.random.default_rng(self.seed).permutation(self.table.num_rows)[:count])
        images, kept = artifacts.decode_images(self.table.take(rows), self.params.data, str(paths.CORPUS))
        labels = torch.from_numpy(self.labels[rows][kept])
        labels[labels >= len(self.params.data.class_names)] = -1
        return images, labels

    def class_text(self, model) -> torch.Tensor:
        return class_embeddings(model, self.tokenize, self.params.data.class_names, self.params.model.templates)
