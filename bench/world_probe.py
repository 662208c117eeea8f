"""Probes a world's regime before a whole matrix is run: the clean model's validation CA, then for
each poisoning setting the undefended and linear-probe validation ASR.

    uv run python bench/world_probe.py SCRATCH_DIR 'data: {distractors: 1}' badnet:0.05:0.001 blended:0.05:0.0003
    PROBE_DEFENSES=none,linear_probe,cleanclip uv run python bench/world_probe.py SCRATCH_DIR '' wanet:0.1:0.0005

The first argument is a scratch folder (reused: its clean model is trained once); the second, YAML
merged into params.yaml; each further one is attack:rate:lr[:steps] for the poisoning fine-tune
(steps: pretrain.poisoned.steps, the params' own when left out).
PROBE_DEFENSES names the defenses scored (default: none and the linear probe). PROBE_SEEDS=0,1,2
probes the same world on each of these world seeds (`seed`: the corpus, the clean model, the task
and the poisoning), in SCRATCH_DIR/seed-N, then prints each cell's mean +- std over them. The
stages are the pipeline's own (`rvpt stage ...`), logging to the scratch folder's MLflow store.
ASR is read here to calibrate the attacker's world, never to choose a defense's settings.
Run it alone: two torch jobs on 2 cores slow each other down 10x.
"""
from __future__ import annotations

import copy
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"val CA ([\d.]+)(?:, val ASR ([\d.]+))?|val clean_accuracy ([\d.]+)")


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return base


def stage(root: Path, params: dict, *argv: str) -> tuple[str, float]:
    """Runs one stage in `root` with `params`; returns its summary line and wall seconds."""
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "stage", *argv], cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"rvpt stage {' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[-1], time.perf_counter() - started


def figures(line: str) -> tuple[float, float | None]:
    match = FIGURE.search(line)
    if match.group(3):
        return float(match.group(3)), None
    return float(match.group(1)), float(match.group(2)) if match.group(2) else None


def probe(root: Path, base: dict, poisonings: tuple[str, ...], defenses: list[str]) -> list[list[tuple]]:
    """One world: trains its clean model once, then prints a row per poisoning; returns the cells."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "models" / "clean" / "pretrain.json").exists():
        stage(root, base, "download")
        line, seconds = stage(root, base, "pretrain", "--clean")
        print(f"clean model (seed {base['seed']}): val CA {figures(line)[0]:.3f} ({seconds:.0f} s)", flush=True)
        stage(root, base, "sample")
    print("| attack | rate | lr | steps | " + " | ".join(f"{d} val CA / ASR" for d in defenses) + " |")
    print("|---|---|---|---|" + "---|" * len(defenses), flush=True)
    rows = []
    for spec in poisonings:
        attack, rate, lr, *steps = spec.split(":")
        poisoned = {"lr": float(lr), **({"steps": int(steps[0])} if steps else {})}
        params = merge(copy.deepcopy(base),
                       {"attacks": {attack: {"rate": float(rate)}}, "pretrain": {"poisoned": poisoned}})
        stage(root, params, "poison", "--attack", attack)
        stage(root, params, "pretrain", "--attack", attack)
        cells = [figures(stage(root, params, "tune", "--attack", attack, "--defense", d)[0])
                 for d in defenses]
        steps = params["pretrain"]["poisoned"]["steps"]
        print(f"| {attack} | {rate} | {lr} | {steps} | " + " | ".join(f"{ca:.3f} / {asr:.3f}" for ca, asr in cells)
              + " |", flush=True)
        rows.append(cells)
    return rows


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main(scratch: str, world: str, *poisonings: str) -> None:
    base = merge(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(world) or {})
    defenses = os.environ.get("PROBE_DEFENSES", "none,linear_probe").split(",")
    seeds = [int(s) for s in os.environ.get("PROBE_SEEDS", "").split(",") if s.strip()]
    if not seeds:
        probe(Path(scratch), base, poisonings, defenses)
        return
    runs = []
    for seed in seeds:
        print(f"\nworld seed {seed}", flush=True)
        runs.append(probe(Path(scratch) / f"seed-{seed}", merge(copy.deepcopy(base), {"seed": seed}),
                          poisonings, defenses))
    if len(seeds) < 2:
        return
    print(f"\nmean +- std over world seeds {', '.join(map(str, seeds))}")
    print("| poisoning | " + " | ".join(f"{d} val CA | {d} val ASR" for d in defenses) + " |")
    print("|---|" + "---|---|" * len(defenses))
    for i, spec in enumerate(poisonings):
        cells = [[run[i][j] for run in runs] for j in range(len(defenses))]
        print(f"| {spec} | " + " | ".join(f"{spread([ca for ca, _ in c])} | {spread([asr for _, asr in c])}"
                                          for c in cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
