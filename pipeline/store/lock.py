"""A stage run by hand takes the same locks as `dvc repro`, so the two never write one output at once.

DVC holds the repository lock (.dvc/tmp/lock, a zc.lockfile) while it plans and commits, and
records in .dvc/tmp/rwlock which live process writes which outputs while a stage's command
runs. A hand-run stage takes the first and refuses while the second names a live writer. A
stage that DVC itself runs (DVC_ROOT is set) or a torchrun worker (its launcher holds the lock)
takes nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import psutil
import zc.lockfile

from rvpt.errors import BadInput, shown


def _writers(rwlock: Path) -> list[dict]:
    try:
        recorded = json.loads(rwlock.read_text())
    except (OSError, ValueError):
        return []
    writes = recorded.get("write", {}) if isinstance(recorded, dict) else {}
    infos = writes.values() if isinstance(writes, dict) else []
    return [info for info in infos if isinstance(info, dict) and isinstance(info.get("pid"), int)
            and info["pid"] != os.getpid() and psutil.pid_exists(info["pid"])]


@contextlib.contextmanager
def project_lock(root: Path | None = None):
    root = Path.cwd() if root is None else root
    if os.environ.get("DVC_ROOT") or "RANK" in os.environ or not (root / ".dvc").is_dir():
        yield
        return
    tmp = root / ".dvc" / "tmp"
    tmp.mkdir(exist_ok=True)
    try:
        held = zc.lockfile.LockFile(str(tmp / "lock"))
    except zc.lockfile.LockError:
        raise BadInput(f"{tmp / 'lock'} is held: a dvc command or another rvpt stage is running in this project; "
                       f"wait for it to finish") from None
    try:
        busy = _writers(tmp / "rwlock")
        if busy:
            raise BadInput(f"`{shown(busy[0].get('cmd', '?'))}` (pid {busy[0]['pid']}) is running a stage of this "
                           f"project under dvc; wait for it to finish")
        yield
    finally:
        held.close()
