"""Each attack as params.yaml configures it: the one place its options become an rvpt Attack, for
the stage that poisons with it and the stages that score its trigger; and the images an attacker
that trains its trigger (or edits weights) works on."""
from __future__ import annotations

import numpy as np
import torch

from pipeline import artifacts, paths
from pipeline.params import Params
from rvpt import attacks
from rvpt.errors import BadInput


def build_attack(params: Params, name: str) -> attacks.Attack:
    spec = params.attacks[name]
    options = {"seed": params.seed, **spec.options}
    try:
        return attacks.build(spec.kind, params.data.image_size, **options)
    except (TypeError, ValueError) as error:
        raise BadInput(f"params.yaml: attacks.{name}.options: {error}") from None


def edits_weights(params: Params, name: str) -> bool:
    """Whether the attack edits the clean model's weights instead of poisoning its corpus."""
    return attacks.REGISTRY[params.attacks[name].kind].edits_weights


def attacker_images(params: Params, name: str, table) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus images (float, [0, 1]) an attacker that trains its trigger works on: a random
    `optimise.images` of them, drawn from the seed, the same for every stage that needs them; and
    their labels as downstream class indices, -1 where an image shows no downstream class (a
    corpus-only concept, or a web corpus's unlabelled pair)."""
    spec = params.attacks[name].optimise
    rows = np.sort(np.random.default_rng(params.seed).permutation(table.num_rows)[:spec.images])
    chosen = table.take(rows)
    images, kept = artifacts.decode_images(chosen, params.data, str(paths.CORPUS))
    labels = torch.from_numpy(artifacts.labels(chosen)[kept])
    labels[labels >= len(params.data.class_names)] = -1
    return images, labels
