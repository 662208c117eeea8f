"""Each attack as params.yaml configures it: the one place its options become an rvpt Attack, for
the stage that poisons with it and the stages that score its trigger."""
from __future__ import annotations

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
