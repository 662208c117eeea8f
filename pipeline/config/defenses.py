"""params.yaml's `defenses` section, validated where defenses run (tune, scan, evaluate, `check`,
`rvpt defend`): each block from its kind's Config in rvpt/defenses/, and held to the model (the
defense's `fits`) and to the data (the clean pairs it needs). A stage that never runs a defense
never imports one, so an edit to a defense reruns only the stages that run defenses."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from pipeline.config.params import Params
from pipeline.config.sections import culprit, section, validated
from rvpt.defenses.registry import KINDS, fits, pairs_needed
from rvpt.errors import BadInput

Defense = Annotated[Union[tuple(section(module.Config, f"{kind}_defense", kind=(Literal[kind], ...))
                                for kind, module in KINDS.items())], Field(discriminator="kind")]


def defense(params: Params, name: str):
    """The defense's validated block (its `kind`, and `settings()` for its Config), checked against
    the model and the data; BadInput naming the key on a bad value."""
    found = params._sections.get(("defenses", name))
    if found is None:
        found = validated(Defense, params.defenses[name], ("defenses", name), params, tuple(KINDS))
        kind = KINDS[found.kind]
        config = kind.Config(**found.settings())
        problem = fits(kind, config, params.model.shape)
        if not problem and pairs_needed(kind, config) > params.data.defender_pairs:
            problem = f"budget: {pairs_needed(kind, config)} exceeds data.defender_pairs ({params.data.defender_pairs})"
        if problem:
            raise BadInput(culprit(f"defenses.{name}.{problem}", params._source, params._flags))
        params._sections[("defenses", name)] = found
    return found


def check_all(params: Params) -> None:
    """Every block of the section, as `rvpt stage check` holds the whole file to them."""
    for name in params.defenses:
        defense(params, name)
