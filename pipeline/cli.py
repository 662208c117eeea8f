"""The `rvpt` command: the pipeline's stages (`rvpt stage NAME`, pipeline/commands/stage.py) and
the commands around it: defend or scan a model you were handed, profiles, calibration, the UI,
`rvpt repro`. Each command's work lives in its own module, imported when the command runs.

Bad input exits with code 2 and one line naming the culprit, before any output is written.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.commands.run import (ARGV, CACHE, CLASSNAMES, CONFIG, DATA_SHA256, PARAMS, SET, SHA256, bounded,
                                   execute, fail, plain)
from pipeline.commands.stage import stage_app
from rvpt.errors import BadInput

app = typer.Typer(help="Backdoor CLIP on purpose, defend it with RVPT, and measure both.\n\n"
                       "`dvc repro` runs the whole pipeline; `rvpt stage NAME` runs one stage of it; "
                       "`rvpt defend` defends a model you were handed; `rvpt report` writes the report.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")  # markdown joins a docstring's wrapped lines into one paragraph
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


@app.command()
def report(params: Path = PARAMS, settings: list[str] = SET):
    """Write the report and plots: the same as `rvpt stage report`."""
    from pipeline.commands.stage import report as stage_report

    stage_report(params, settings)


@app.command()
def calibrate(summary: Path = typer.Option(Path("results/summary.json"), help="Matrix to compare (rvpt stage evaluate "
                                                                             "writes it).")):
    """Print every paper cell's ASR category (removed / partial / survives) beside ours, and the share that match."""
    from pipeline.report import calibration

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
    from pipeline.commands import defend as command

    defense = plain(defense, "--defense")
    execute("defend", params, [],
            lambda p: command.run(p, model, data, out, config, sha256, data_sha256, classnames, cache, track),
            label="rvpt defend", tracked=False, named={"defend.defense": ("--defense", defense)})


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
    from pipeline.commands import scan as command

    execute("scan", params, [], lambda p: command.run(p, model, data, out, config, sha256, data_sha256, classnames,
                                                      cache), label="rvpt scan", tracked=False)


from pipeline.commands.profile import profile_app  # noqa: E402  (the commands above come first in --help)
from pipeline.commands.repro import CONTEXT, repro  # noqa: E402
from pipeline.commands.ui import ui  # noqa: E402

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
    """Console entry point: a stage forks from a warm server when one can serve it (pipeline/commands/warm.py)."""
    from pipeline.commands import warm

    code = warm.run(sys.argv[1:])
    sys.exit(invoke() if code is None else code)


if __name__ == "__main__":
    main()
