"""The `rvpt` command: every pipeline stage as `rvpt stage <name>`, reading params.yaml.

Options override params.yaml for this run only; DVC runs the same commands without them.
Bad input exits with code 2 and one line naming the culprit, before any output is written.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.command import (ARGV, CACHE, CLASSNAMES, CONFIG, DATA_SHA256, PARAMS, SHA256, bounded, execute, fail, plain,
                              preflight, selected)
from rvpt.errors import BadInput

app = typer.Typer(help="Backdoor CLIP on purpose, defend it with RVPT, and measure both.\n\n"
                       "`dvc repro` runs the whole pipeline; `rvpt stage NAME` runs one stage of it; "
                       "`rvpt defend` defends a model you were handed; `rvpt report` writes the report.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")  # markdown joins a docstring's wrapped lines into one paragraph
stage_app = typer.Typer(help="Run one pipeline stage (what `dvc repro` runs), with optional overrides.",
                        no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(stage_app, name="stage")

# typer prints a flag's type as "<bool>", as if it took a value; a flag shows none.
_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _display_type(self, ctx)


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"rvpt {version('rvpt')}")
        raise typer.Exit()


@app.callback()
def options(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                         help="Print rvpt's version and exit.")):
    pass


@stage_app.command()
def check(params: Path = PARAMS):
    """Check params.yaml whole (names, types, sizes) before DVC runs or deletes anything for a later stage."""
    from pipeline.stages import check as stage

    execute("check", params, {}, stage.run, tracked=False)


@stage_app.command()
def download(params: Path = PARAMS,
             corpus_size: Optional[int] = typer.Option(None, help="Pretraining pairs to render."),
             seed: Optional[int] = typer.Option(None, help="Random seed.")):
    """Make the clean pretraining corpus and the downstream train/val/test splits."""
    from pipeline.stages import download as stage

    execute("download", params, {"data.corpus_size": ("--corpus-size", corpus_size), "seed": ("--seed", seed)},
            stage.run)


@stage_app.command()
def poison(params: Path = PARAMS,
           attack: Optional[str] = typer.Option(None, help="Attack name from params.yaml (default: all in run.attacks)."),
           rate: Optional[float] = typer.Option(None, help="Poisoned fraction of the corpus, in (0, 1]."),
           target: Optional[str] = typer.Option(None, help="Target class name.")):
    """Apply an attack's trigger to a fraction of the corpus, with target-class captions."""
    from pipeline.stages import poison as stage

    attack = plain(attack, "--attack")

    def work(p):
        names = selected(attack, p.attacks, p.run.attacks, "--attack")
        p.require(attacks=names, source=str(params))
        preflight(stage.needs(p, name) for name in names)
        return (stage.run(p, name) for name in names)

    key = f"attacks.{attack}" if attack else None
    overrides = {f"{key}.rate": ("--rate", rate), f"{key}.target": ("--target", target)} if key else {}
    if not key and (rate is not None or target is not None):
        fail("--rate and --target need --attack")
    execute("poison", params, overrides, work)


@stage_app.command()
def pretrain(params: Path = PARAMS,
             attack: Optional[str] = typer.Option(None, help="Attack whose poisoned corpus to train on (default: all)."),
             clean: bool = typer.Option(False, "--clean", help="Train the clean base model instead."),
             steps: Optional[int] = typer.Option(None, help="Optimizer steps.")):
    """Train the clean CLIP, or fine-tune it on a poisoned corpus (the victim's training)."""
    from pipeline.stages import pretrain as stage

    attack = plain(attack, "--attack")

    def work(p):
        names = [None] if clean else selected(attack, p.attacks, p.run.attacks, "--attack")
        p.require(attacks=[name for name in names if name], source=str(params))
        preflight(stage.needs(p, name) for name in names)
        return (stage.run(p, name) for name in names)

    if clean and attack:
        fail("--clean and --attack exclude each other")
    schedule = "pretrain.clean" if clean else "pretrain.poisoned"
    execute("pretrain", params, {f"{schedule}.steps": ("--steps", steps)}, work, distributed=True)


@stage_app.command()
def sample(params: Path = PARAMS,
           shots: Optional[int] = typer.Option(None, help="Clean examples per class (K).")):
    """Draw the defender's K-shot clean subset of the downstream train split."""
    from pipeline.stages import sample as stage

    execute("sample", params, {"sample.shots": ("--shots", shots)}, stage.run)


@stage_app.command()
def tune(params: Path = PARAMS,
         attack: Optional[str] = typer.Option(None, help="Attack name (default: all in run.attacks)."),
         defense: Optional[str] = typer.Option(None, help="Defense name (default: all in run.defenses)."),
         shots: Optional[int] = typer.Option(None, help="Use the first K shots per class of the sample."),
         alpha: Optional[float] = typer.Option(None, help="Weight of the feature-repelling loss (prompt defenses)."),
         epochs: Optional[int] = typer.Option(None, help="Passes over the defender's data."),
         tokens: Optional[int] = typer.Option(None, help="Prompt tokens per block, b (prompt defenses)."),
         first_block: Optional[int] = typer.Option(None, help="First prompted block, 0-based, D (prompt defenses)."),
         lr: Optional[float] = typer.Option(None, help="Learning rate."),
         defense_seed: Optional[int] = typer.Option(None, help="The defense's own seed (tune.seed).")):
    """Defend each backdoored model with the defender's clean data (RVPT, VPT, baselines).

    Options other than --attack and --shots change one defense's settings, so they need --defense.
    """
    from pipeline.stages import tune as stage

    attack, defense = plain(attack, "--attack"), plain(defense, "--defense")

    def work(p):
        attacks = selected(attack, p.attacks, p.run.attacks, "--attack")
        defenses = selected(defense, p.defenses, p.run.defenses, "--defense")
        p.require(attacks, defenses, source=str(params))
        preflight(stage.needs(p, a, d) for a in attacks for d in defenses)
        trained, val = stage.shared(p)
        return (stage.run(p, a, d, trained, val) for d in defenses for a in attacks)

    settings = {"alpha": alpha, "epochs": epochs, "tokens": tokens, "first_block": first_block, "lr": lr}
    given = [name for name, value in settings.items() if value is not None]
    if given and defense is None:
        fail(f"--{given[0].replace('_', '-')} needs --defense (it is a setting of one defense)")
    overrides = {"sample.shots": ("--shots", shots), "tune.seed": ("--defense-seed", defense_seed)}
    if defense is not None:
        overrides.update({f"defenses.{defense}.{name}": (f"--{name.replace('_', '-')}", value)
                          for name, value in settings.items()})
    execute("tune", params, overrides, work, distributed=True)


@stage_app.command("scan")
def scan_stage(params: Path = PARAMS):
    """Trigger inversion on the clean, backdoored and defended models: is each backdoored, towards which class?"""
    from pipeline.stages import scan as stage

    def work(p):
        preflight([stage.needs(p)])
        return stage.run(p)

    execute("scan", params, {}, work)


@stage_app.command()
def evaluate(params: Path = PARAMS):
    """Score the clean model and every (attack, defense) cell on the test split: CA, ASR, diagnostics."""
    from pipeline.stages import evaluate as stage

    execute("evaluate", params, {}, stage.run)


@stage_app.command("report")
def report_stage(params: Path = PARAMS):
    """The report and plots (the same as `rvpt report`)."""
    report(params)


@app.command()
def report(params: Path = PARAMS):
    """Write the self-contained results/report.html and the plots in results/plots/.

    The page holds the matrix, triggers, poisoned samples, loss curves and trainable parameters,
    with every image inlined; the plots are what `dvc plots show` renders.
    """
    from pipeline.stages import report as stage

    execute("report", params, {}, stage.run, label="rvpt report")


@app.command()
def calibrate(summary: Path = typer.Option(Path("results/summary.json"), help="Matrix to compare (rvpt stage evaluate "
                                                                             "writes it).")):
    """Print every paper cell's ASR category (removed / partial / survives) beside ours, and the share that match."""
    from pipeline import calibration

    try:
        typer.echo(calibration.markdown(calibration.compare(calibration.read_rows(summary), calibration.paper_cells())))
    except BadInput as error:
        fail(str(error))


@app.command()
def defend(model: str = typer.Option(..., help="Untrusted model: an open_clip local-dir folder, a weights file "
                                               "(.safetensors, or weights-only .bin/.pt/.pth), an archive, or a URL."),
           data: str = typer.Option(..., help="Few-shot images: root/CLASS/\\*.jpg (or root/train + root/test), "
                                              "an archive of it, or a URL."),
           out: Path = typer.Option(..., help="Output folder: open_clip local-dir model + what the defense trained."),
           config: Optional[str] = CONFIG, sha256: Optional[str] = SHA256, data_sha256: Optional[str] = DATA_SHA256,
           classnames: Optional[Path] = CLASSNAMES,
           defense: Optional[str] = typer.Option(None, help="Defense name from params.yaml (default: defend.defense)."),
           track: bool = typer.Option(True, "--track/--no-track",
                                      help="Log an MLflow run and register the defended model as "
                                           "rvpt-defend-DEFENSE (in MLFLOW_TRACKING_URI, else ./mlflow.db)."),
           cache: Path = CACHE, params: Path = PARAMS):
    """Defend a model you were handed: tune RVPT on your few-shot images, report CA before and after.

    With defend.scan, also scans the model for a backdoor before and after (as `rvpt scan`). Runs outside
    the DVC pipeline; its MLflow run stands alone, not under a pipeline's. Nothing in the model is unpickled.
    """
    from pipeline import defend as command

    defense = plain(defense, "--defense")
    execute("defend", params, {"defend.defense": ("--defense", defense)},
            lambda p: command.run(p, model, data, out, config, sha256, data_sha256, classnames, cache, track),
            label="rvpt defend", tracked=False)


@app.command()
def scan(model: str = typer.Option(..., help="Untrusted model, as for `rvpt defend`; an `rvpt defend` output "
                                             "folder is scanned with what its defense trained."),
         data: str = typer.Option(..., help="Clean images: root/CLASS/\\*.jpg (or root/train + root/test), an "
                                            "archive of it, or a URL."),
         out: Path = typer.Option(..., help="Output folder: scan.json and the inverted triggers (triggers.png)."),
         config: Optional[str] = CONFIG, sha256: Optional[str] = SHA256, data_sha256: Optional[str] = DATA_SHA256,
         classnames: Optional[Path] = CLASSNAMES, cache: Path = CACHE, params: Path = PARAMS):
    """Is this model backdoored, and towards which class? Trigger inversion with no trigger given.

    Prints a one-line verdict; the report is --out/scan.json. Settings: params.yaml's `scan`.
    """
    from pipeline import scan_model as command

    execute("scan", params, {}, lambda p: command.run(p, model, data, out, config, sha256, data_sha256, classnames,
                                                      cache), label="rvpt scan", tracked=False)


from pipeline.cli_profile import profile_app  # noqa: E402  (the commands above come first in --help)
from pipeline.cli_repro import CONTEXT, repro  # noqa: E402
from pipeline.cli_ui import ui  # noqa: E402

app.add_typer(profile_app, name="profile")
app.command()(ui)
app.command(context_settings=CONTEXT)(repro)


def invoke(argv: list[str] | None = None) -> int:
    """Runs the command line and returns its exit code. Usage errors (a malformed value, an unknown
    option) become one line too, still with exit code 2, instead of click's framed message."""
    # typer >= 0.29 vendors click; its exceptions live here (typer is pinned by uv.lock).
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    ARGV[:] = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as error:
        typer.echo(error.format_message())
        code = 0
    except ClickException as error:
        # "rvpt: error: stage tune: No such option: --bogus": the program is named once.
        path = error.ctx.command_path.split()[1:] if getattr(error, "ctx", None) else []
        where = f"{' '.join(path)}: " if path else ""
        typer.echo(f"rvpt: error: {bounded(where + ' '.join(error.format_message().split()))}", err=True)
        code = error.exit_code
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.Abort:
        code = 1
    return code if isinstance(code, int) else 0


def main() -> None:
    """Console entry point: a stage forks from a warm server when one can serve it (pipeline/warm.py)."""
    from pipeline import warm

    code = warm.run(sys.argv[1:])
    sys.exit(invoke() if code is None else code)


if __name__ == "__main__":
    main()
