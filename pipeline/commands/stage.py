"""`rvpt stage NAME`: every pipeline stage as a command, exactly what `dvc repro` runs.

Every stage takes `--params` and `-S KEY=VALUE` (repeatable): a params.yaml key changed for this
run only, the value read as YAML, as DVC's `dvc exp run -S` writes it (`-S defenses.rvpt.alpha=1
-S sample.shots=8`). The stages that run a cell per attack or defense take `--attack` (and tune
`--defense`) to run one of them instead of every one in `run`. Each command hands over to its
stage module, pipeline/stages/NAME.py, which does the work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.commands.run import PARAMS, SET, execute, fail, plain

stage_app = typer.Typer(help="Run one pipeline stage (what `dvc repro` runs), with optional overrides.",
                        no_args_is_help=True, rich_markup_mode="markdown")
ATTACK = typer.Option(None, help="One attack from params.yaml (default: every one in run.attacks).")
DEFENSE = typer.Option(None, help="One defense from params.yaml (default: every one in run.defenses).")


@stage_app.command()
def check(params: Path = PARAMS, settings: list[str] = SET):
    """Check params.yaml whole (names, types, sizes) before DVC runs or deletes anything for a later stage."""
    from pipeline.stages import check as stage

    execute("check", params, settings, stage.run, tracked=False)


@stage_app.command()
def download(params: Path = PARAMS, settings: list[str] = SET):
    """Make the clean pretraining corpus and the downstream train/val/test splits."""
    from pipeline.stages import download as stage

    execute("download", params, settings, stage.run)


@stage_app.command()
def poison(params: Path = PARAMS, attack: Optional[str] = ATTACK, settings: list[str] = SET):
    """Put an attack's trigger on a fraction of the corpus, with target-class captions."""
    from pipeline.stages import poison as stage

    attack = plain(attack, "--attack")
    execute("poison", params, settings, lambda p: stage.jobs(p, attack))


@stage_app.command()
def pretrain(params: Path = PARAMS, attack: Optional[str] = ATTACK,
             clean: bool = typer.Option(False, "--clean", help="Train (or take) the clean base model instead."),
             settings: list[str] = SET):
    """Train the clean CLIP, or fine-tune it on a poisoned corpus (the victim's training)."""
    from pipeline.stages import pretrain as stage

    attack = plain(attack, "--attack")
    if clean and attack:
        fail("--clean and --attack exclude each other")
    execute("pretrain", params, settings, lambda p: stage.jobs(p, attack, clean), distributed=True)


@stage_app.command()
def sample(params: Path = PARAMS, settings: list[str] = SET):
    """Draw the defender's K-shot clean subset of the downstream train split."""
    from pipeline.stages import sample as stage

    execute("sample", params, settings, stage.run)


@stage_app.command()
def tune(params: Path = PARAMS, attack: Optional[str] = ATTACK, defense: Optional[str] = DEFENSE,
         settings: list[str] = SET):
    """Defend each backdoored model with the defender's clean data (RVPT, VPT, baselines)."""
    from pipeline.stages import tune as stage

    attack, defense = plain(attack, "--attack"), plain(defense, "--defense")
    execute("tune", params, settings, lambda p: stage.jobs(p, attack, defense), distributed=True)


@stage_app.command()
def scan(params: Path = PARAMS, settings: list[str] = SET):
    """Trigger inversion on the clean, backdoored and defended models: is each backdoored, towards which class?"""
    from pipeline.stages import scan as stage

    execute("scan", params, settings, stage.jobs)


@stage_app.command()
def evaluate(params: Path = PARAMS, settings: list[str] = SET):
    """Score the clean model and every (attack, defense) cell on the test split: CA, ASR, diagnostics."""
    from pipeline.stages import evaluate as stage

    execute("evaluate", params, settings, stage.run)


@stage_app.command()
def report(params: Path = PARAMS, settings: list[str] = SET):
    """Write the self-contained results/report.html, the plots in results/plots/ and the curves' data.

    The page holds the matrix, triggers, poisoned samples, loss curves and trainable parameters,
    with every image inlined; the plots are what `dvc plots show` renders.
    """
    from pipeline.stages import report as stage

    execute("report", params, settings, stage.run)
