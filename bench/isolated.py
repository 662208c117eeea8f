"""Runs one measurement in a fresh Python process, so that its peak memory and its imports are
its own, and reads back the JSON line it prints last."""
from __future__ import annotations

import json
import subprocess
import sys


def measured(argv: list[str], label: str, cwd=None) -> dict:
    """The last stdout line of `python argv...` as JSON; exits naming `label` if the run fails."""
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        sys.exit(f"{label}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])
