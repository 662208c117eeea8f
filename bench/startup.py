"""What a stage command costs before and around its work, cold (every process imports torch,
open_clip and mlflow) against warm (forked from a server that imported them: pipeline/commands/warm.py).

    uv run python bench/startup.py PROJECT [--runs 7] [--quick]

PROJECT is a project after `dvc repro`, or a copy of one: the runs rewrite its shots and one
undefended cell (the same tensors, new MLflow run ids) and log runs to its store. Each command
runs alone, one after the other, `--runs` times; printed: the median and the range, in seconds.
The warm server is started (and its start timed) before the warm runs. `--quick`: one run of
each, and a server that waits 30 s idle instead of 300 (PROJECT defaults to the current folder).
Commands, each as `rvpt ...` in PROJECT:
- `stage sample`: writes the shots and logs its MLflow run;
- `stage sample -S sample.shots=0`: refused with exit 2 after params validation, before any work;
- `stage tune --attack A --defense none`: loads a backdoored model, scores validation, logs and
  registers the model (A: the first of run.attacks);
- `--help`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def timed(argv: list[str], cwd: Path, expect: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run([shutil.which("rvpt") or "rvpt", *argv], cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != expect:
        sys.exit(f"rvpt {' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    return took


def shown(times: list[float]) -> str:
    return f"{statistics.median(times):6.2f} s ({min(times):.2f}-{max(times):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path, nargs="?", default=Path("."))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one run each; the warm server idles 30 s")
    args = parser.parse_args()
    runs, idle_s = (1, 30) if args.quick else (args.runs, 300)
    project = args.project.resolve()
    params = yaml.safe_load((project / "params.yaml").read_text())
    attack = params["run"]["attacks"][0]
    tune = ["stage", "tune", "--attack", attack, "--defense", "none"]
    commands = [("stage sample", ["stage", "sample"], 0),
                ("stage sample -S sample.shots=0", ["stage", "sample", "-S", "sample.shots=0"], 2),
                (" ".join(tune), tune, 0), ("--help", ["--help"], 0)]
    original = (project / "params.yaml").read_bytes()
    runtime = Path(tempfile.mkdtemp(prefix="rvpt-bench-"))  # a server of its own, started here
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    results: dict[str, dict[str, str]] = {}
    try:
        for mode, warm_s in (("cold", 0), ("warm", idle_s)):
            params.setdefault("startup", {})["warm_s"] = warm_s
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            if mode == "warm":
                print(f"warm server start (first stage, server included): {timed(['stage', 'sample'], project):.2f} s")
            for label, argv, expect in commands:
                results.setdefault(label, {})[mode] = shown([timed(argv, project, expect) for _ in range(runs)])
    finally:
        (project / "params.yaml").write_bytes(original)
        shutil.rmtree(runtime, ignore_errors=True)  # the idle server exits on its own; its socket goes here
    print(f"{'command':<51} {'cold: median (min-max)':<26} warm: median (min-max)")
    for label, row in results.items():
        print(f"rvpt {label:<46} {row['cold']:<26} {row['warm']}")


if __name__ == "__main__":
    main()
