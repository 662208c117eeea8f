"""Which process owns something (a temporary folder, an MLflow run), and whether it still runs.

A pid alone is not an identity: pids are reused. The owner is recorded as host, pid and the
process's start time, so a later process with the same pid is not taken for the owner.
"""
from __future__ import annotations

import hashlib
import os
import socket


def host() -> str:
    """A short, path-safe name for this machine."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses; the fields after its last ")" do not.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def me() -> dict[str, str]:
    pid = os.getpid()
    return {"host": host(), "pid": str(pid), "started": started(pid)}


def gone(owner: dict) -> bool:
    """True only when the owner is surely gone: same host, and its pid is dead or now another process.

    An owner on another host, or one that cannot be told apart, counts as alive: nothing of it
    is touched.
    """
    try:
        pid = int(owner.get("pid", ""))
    except (TypeError, ValueError):
        return False
    if owner.get("host") != host() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by another user
    recorded = owner.get("started", "")
    return bool(recorded) and started(pid) not in ("", recorded)
