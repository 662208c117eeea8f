"""Stage `check`: params.yaml checked whole (names, types, sizes, the cells' cross-checks) before
DVC runs any other stage.

DVC builds its matrix stages from params.yaml's `run` lists: a name becomes part of a shell
command (`rvpt stage tune --defense NAME`) and of an output path that DVC deletes before the
stage runs (`defended/NAME`). Every other stage depends on this one's output, so a params file
that rvpt refuses stops `dvc repro` here, before DVC runs or deletes anything for a later stage.

The output is the same few bytes whatever the params are, so a change to params.yaml reruns this
stage alone and never invalidates the stages after it. It logs no MLflow run: it trains and
measures nothing.
"""
from __future__ import annotations

from pipeline.store import artifacts, paths
from pipeline.config import defenses
from pipeline.config.training import schedule_of
from pipeline.config.params import Params
from pipeline.config.scanner import scanner

NOTE = "params.yaml passed `rvpt stage check`; every other stage depends on this file\n"


def run(params: Params) -> str:
    # Validated with the file: names, types and the attacks. These blocks are validated where
    # they are used, so that a stage depends only on the methods it runs; here, all of them.
    defenses.check_all(params)
    scanner(params)
    for which in ("clean", "poisoned"):
        schedule_of(params, which)
    artifacts.write_text(paths.CHECKED, NOTE)
    return (f"params.yaml is sound: {len(params.run.attacks)} attacks x {len(params.run.defenses)} defenses; "
            f"wrote {paths.CHECKED}")
