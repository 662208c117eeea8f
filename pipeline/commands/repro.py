"""`rvpt repro`: `dvc repro`, after rvpt's own reader has read params.yaml.

DVC reads params.yaml itself, with its own YAML parser, before it runs any stage: to expand the
matrix stages and to hash each stage's params. A hostile file reaches that parser before `rvpt
stage check` can refuse it: a YAML alias bomb exhausts memory, a FIFO blocks DVC forever. This
command reads the file first as every rvpt stage does (a small regular file, aliases bounded, no
repeated key, no control character, plain attack and defense names in `run`), then hands over to
`dvc repro` with the same arguments. docs/security.md lists what DVC parses first.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from pipeline.commands.run import fail
from rvpt.errors import BadInput

CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}  # --help is rvpt's; the rest go to DVC


def repro(ctx: typer.Context):
    """Check params.yaml with rvpt's reader, then run `dvc repro` with these arguments (`rvpt repro -s tune@rvpt`)."""
    from pipeline.config import params_file
    from pipeline.store.paths import check_name

    try:
        raw = params_file.read(Path("params.yaml"))
        run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
        for key in ("attacks", "defenses"):  # the names DVC pastes into commands and output paths
            names = run.get(key)
            for name in names if isinstance(names, list) else []:
                check_name(name, f"params.yaml: run.{key}: {key[:-1]}")
    except BadInput as error:
        fail(str(error))
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "dvc", "repro", *ctx.args])
