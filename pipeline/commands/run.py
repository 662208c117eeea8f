"""How one `rvpt` command runs: params loaded and checked, the tracking store and the project's
lock taken, seeds and threads fixed, then the work, with every BadInput turned into one line on
stderr and exit code 2."""
from __future__ import annotations

import contextlib
import errno
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
import yaml
from safetensors import SafetensorError

from rvpt.errors import BadInput

PARAMS = typer.Option(Path("params.yaml"), "--params", help="Params file to read.")
SET = typer.Option([], "--set", "-S", metavar="KEY=VALUE",
                   help="Change one params.yaml key for this run only, the value read as YAML (repeatable): "
                        "-S defenses.rvpt.alpha=1 -S sample.shots=8.")
# Options `rvpt defend` and `rvpt scan` share: the model and data a user brings, read the same way.
CONFIG = typer.Option(None, help="For a weights file: open_clip model name or config JSON.")
SHA256 = typer.Option(None, help="Expected sha256 of --model (required for a URL).")
DATA_SHA256 = typer.Option(None, help="Expected sha256 of --data (required for a URL).")
CLASSNAMES = typer.Option(None, help="Class names, one per line, in sorted folder order (default: folder names, "
                                     "_ as space).")
CACHE = typer.Option(Path.home() / ".cache" / "rvpt", help="Where downloads and extracted archives go.")


def one_line(message: str) -> str:
    """The message with control characters (newlines included) escaped, so it stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


MAX_ERROR = 400  # characters: a message naming a huge value stays one readable line


def bounded(message: str) -> str:
    message = one_line(message)
    return message if len(message) <= MAX_ERROR else f"{message[:MAX_ERROR - 100]} ... {message[-95:]}"


def fail(message: str) -> None:
    typer.echo(f"rvpt: error: {bounded(message)}", err=True)
    raise typer.Exit(2)


def plain(name: Optional[str], flag: str) -> Optional[str]:
    """An --attack or --defense value, refused unless it is a name that is safe as a folder name."""
    from pipeline.store.paths import check_name

    try:
        return None if name is None else check_name(name, flag)
    except BadInput as error:
        fail(str(error))


ARGV: list[str] = []  # this command line's arguments, for relaunching under torchrun


def relaunch(processes: int) -> int:
    """Runs this same command under torchrun with `processes` processes; returns its exit code."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "pipeline.cli", *ARGV]
    return subprocess.run(command).returncode


def overrides(settings: list[str]) -> dict[str, tuple[str, object]]:
    """-S KEY=VALUE options as {key: (the option as given, value)}, each value read as YAML with the
    params file's own reader (no alias bomb, no control character)."""
    from pipeline.config.params_file import check_size

    found = {}
    for given in settings:
        key, equals, text = given.partition("=")
        if not equals or not all(part.isidentifier() for part in key.split(".")):
            raise BadInput(f"-S {given!r}: give KEY=VALUE, KEY a dotted params.yaml key (defenses.rvpt.alpha=1)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise BadInput(f"-S {key}: not a YAML value ({' '.join(str(error).split())[:120]})") from None
        check_size({key: value}, Path(f"-S {key}"))
        found[key] = (f"-S {key}", value)
    return found


def execute(name: str, params_path: Path, settings: list[str], work: Callable, label: str | None = None,
            tracked: bool = True, distributed: bool = False, validate: bool = True,
            named: dict[str, tuple[str, object]] | None = None) -> None:
    """Loads params (with the -S overrides, and a command's own `named` ones: {key: (option, value
    or None when not given)}), checks the tracking server, fixes seeds and threads, and runs `work(params)`.

    `work` returns one summary or yields one per job (e.g. per tune cell); each is printed as
    soon as its job ends, with the seconds that job took. A `distributed` stage asked for more
    than one process (compute.processes) relaunches itself under torchrun; only rank 0 prints.
    """
    import torch

    from pipeline.store import lock
    from pipeline.config import params as params_module
    from pipeline.tracking import location, runs
    from rvpt import compute

    started = time.perf_counter()
    runs.STARTED = time.time()
    try:
        if not validate:  # the command writes the params file itself
            typer.echo(f"{label}: {work(None)} ({time.perf_counter() - started:.1f} s)")
            return
        given = {**overrides(settings), **{k: v for k, v in (named or {}).items() if v[1] is not None}}
        params = params_module.load(params_path, given)
        if tracked:
            location.check_reachable(params.tracking.timeout_s)
        with lock.project_lock() if tracked else contextlib.nullcontext():
            if distributed and params.compute.processes > 1 and not compute.launched_by_torchrun():
                raise typer.Exit(relaunch(params.compute.processes))
            compute.init(params.compute.device)
            torch.set_num_threads(params.threads)
            torch.manual_seed(params.seed)
            messages = work(params)
            for message in [messages] if isinstance(messages, str) else messages:
                if compute.is_main():
                    typer.echo(f"{label or f'rvpt stage {name}'}: {message} ({time.perf_counter() - started:.1f} s)")
                started = time.perf_counter()
    except BadInput as error:
        fail(str(error))
    except (OSError, SafetensorError) as error:
        refused = storage_refusal(error)
        if refused is None:
            raise
        fail(refused)


# What the disk or the file system can refuse a write with: the user's to fix (free space, grant
# the right), so one line rather than a traceback. The run was marked FAILED and its temporaries removed.
STORAGE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "over the disk quota",
           errno.EFBIG: "a file grew past the size limit", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def storage_refusal(error: Exception) -> str | None:
    """One line for a write the storage refused, or None for any other error (a bug: its traceback shows)."""
    if isinstance(error, OSError):
        if error.errno not in STORAGE:
            return None
        where = error.filename or "an output"
        return f"{where}: {STORAGE[error.errno]}; free the space or grant the right, then rerun (training resumes)"
    found = re.search(r"os error (\d+)|code: (\d+)", str(error))  # safetensors names the OS error in its text
    code = int(found.group(1) or found.group(2)) if found else None
    if code in STORAGE:
        return f"writing a safetensors file: {STORAGE[code]}; free the space or grant the right, then rerun " \
               f"(training resumes)"
    return None


