"""Writing outputs so that nothing is lost: checked targets, owned temporaries, atomic renames.

An output folder is built in a temporary sibling, `.<name>.rvpt-tmp-<random>`, holding a marker
that records the owning process. Only such a folder whose marker says its owner is gone (a
killed run) is ever cleaned up, so a user's own `.<name>.anything` and another live run's
temporary are left alone. Nothing here deletes a path that is `.`, `..`, absolute where a name
was expected, a link, or outside the parent it was meant to be in.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline.store import owner
from rvpt.errors import BadInput

MARKER = ".rvpt-temporary"
TAG = ".rvpt-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: mkdtemp and mkstemp ignore it (0700 / 0600), so modes are set from it


def checked_target(path: str | Path, what: str = "output") -> Path:
    """The output path, refused when its last part is no name or it would land outside its parent."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise BadInput(f"{what} {str(path)!r}: not a folder name (refusing to replace it)")
    if ".." in path.parts:
        raise BadInput(f"{what} {str(path)!r}: contains '..' (refusing to write outside its parent)")
    if path.is_symlink():
        raise BadInput(f"{what} {path}: is a symbolic link (refusing to replace it)")
    if path.exists() and not path.is_dir():
        raise BadInput(f"{what} {path}: exists and is not a folder")
    return path


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Checks, before any work, that `path` can be written: a fit target in a writable folder.

    Creates nothing that stays: the nearest existing ancestor is probed with a temporary folder.
    """
    path = checked_target(path, what)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInput(f"{what} {path}: {ancestor} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rvpt-probe-", dir=ancestor))
    except OSError as error:
        raise BadInput(f"{what} {path}: cannot write in {ancestor} ({error.strerror or error})") from None
    return path


def _stale_temporaries(path: Path):
    """This output's temporaries whose owning process is gone."""
    pattern = re.compile(re.escape(f".{path.name}{TAG}") + r"[A-Za-z0-9_]{8}")
    for candidate in path.parent.iterdir():
        if not pattern.fullmatch(candidate.name) or candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            recorded = json.loads((candidate / MARKER).read_text())
        except (OSError, ValueError):
            continue  # no marker of ours: not ours to delete
        if isinstance(recorded, dict) and owner.gone(recorded):
            yield candidate


def owned_temporary(path: Path) -> Path:
    """A fresh temporary sibling of `path`, marked as this process's; stale ones of killed runs are removed."""
    for stale in _stale_temporaries(path):
        shutil.rmtree(stale, ignore_errors=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}{TAG}", dir=path.parent))
    os.chmod(temporary, 0o777 & ~UMASK)
    (temporary / MARKER).write_text(json.dumps(owner.me()))
    return temporary


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yields a temporary sibling folder and renames it to `path` only if the block succeeds.

    A stage killed midway therefore never leaves a half-written output under the final name.
    """
    path = checked_target(path)
    made = missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = owned_temporary(path)
    try:
        yield temporary
        (temporary / MARKER).unlink()
        previous = None
        if path.exists():  # moved aside first, so that the old output is never half deleted
            previous = owned_temporary(path)
            os.replace(path, previous / "old")
        os.replace(temporary, path)
        if previous is not None:
            shutil.rmtree(previous)
    finally:
        if temporary.exists():  # the block failed: nothing of it stays, not even the folders made for it
            shutil.rmtree(temporary)
            remove_empty(made)


def missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, outermost first."""
    return [parent for parent in reversed(path.parents) if not parent.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Removes these folders, innermost first, where they are empty (another run may have filled one)."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def write_text(path: str | Path, text: str) -> None:
    """Writes a temporary sibling, then renames it: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o666 & ~UMASK)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
