"""Progress of long loops that reaches a log.

On a terminal this is tqdm's bar. Anywhere else (nohup, CI, `dvc exp run --queue`) a bar prints
nothing useful, so a plain line goes to stderr instead, at most once per `every_s` seconds: the
step, the rate and the time left. A loop shorter than `every_s` prints nothing. RVPT_PROGRESS_S
sets `every_s` for a whole run (e.g. 300 for quieter logs).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

from tqdm.auto import tqdm

EVERY_S = 30.0


def progress(items: Iterable, desc: str, total: int | None = None, initial: int = 0, enabled: bool = True,
             every_s: float | None = None) -> Iterable:
    """`items`, reporting progress as it is consumed; `initial` steps were done before (a resumed run)."""
    if not enabled:
        return items
    if total is None and hasattr(items, "__len__"):
        total = initial + len(items)
    if sys.stderr.isatty():
        return tqdm(items, desc=desc, total=total, initial=initial, leave=False)
    return _lines(items, desc, total, initial, every_s if every_s is not None else interval())


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("RVPT_PROGRESS_S", EVERY_S)))
    except ValueError:
        return EVERY_S


def _lines(items: Iterable, desc: str, total: int | None, initial: int, every_s: float) -> Iterator:
    started = last = time.monotonic()
    done = initial
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            print(status(desc, done, total, (done - initial) / (now - started)), file=sys.stderr, flush=True)


def status(desc: str, done: int, total: int | None, rate: float) -> str:
    if total is None:
        return f"{desc}: {done} steps, {rate:.2f} it/s"
    left = (total - done) / rate if rate > 0 else float("inf")
    eta = f"{int(left // 60)}m{int(left % 60):02d}s" if left != float("inf") else "?"
    return f"{desc}: {done}/{total} ({100 * done / total:.0f}%), {rate:.2f} it/s, ETA {eta}"
