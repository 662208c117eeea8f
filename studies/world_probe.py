"""Probes a world's regime before a whole matrix is run: the clean model's validation CA, then for
each poisoning setting the undefended and linear-probe validation ASR.

    uv run python studies/world_probe.py SCRATCH_DIR 'data: {distractors: 1}' badnet:0.05:0.001 blended:0.05:0.0003
    PROBE_DEFENSES=none,linear_probe,cleanclip uv run python studies/world_probe.py SCRATCH_DIR '' wanet:0.1:0.0005
    uv run python studies/world_probe.py SCRATCH_DIR '' --quick

The first argument is a scratch folder, made a project by studies/runner.py (reused: its clean
model is trained once); the second, YAML merged into params.yaml; each further one is
attack:rate:lr[:steps] for the poisoning fine-tune (steps: pretrain.poisoned.steps, the params'
own when left out).
PROBE_DEFENSES names the defenses scored (default: none and the linear probe). PROBE_SEEDS=0,1,2
probes the same world on each of these world seeds (`seed`: the corpus, the clean model, the task
and the poisoning), in SCRATCH_DIR/seed-N, then prints each cell's mean +- std over them. The
stages are the pipeline's own (`rvpt stage ...`), logging to the scratch project's MLflow store;
the figures are read from what they write (models/clean/pretrain.json and each cell's
defended/<defense>/<attack>/tune.json). `--quick` probes a tiny world (studies/runner.py's QUICK;
badnet:0.05:0.001 when no poisoning is named): the same path in about a minute, figures that mean
nothing.
ASR is read here to calibrate the attacker's world, never to choose a defense's settings.
Run it alone: two torch jobs on 2 cores slow each other down 10x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import runner  # noqa: E402

QUICK_POISONING = "badnet:0.05:0.001"


def stage(root: Path, params: dict, *argv: str) -> float:
    """Runs one stage in `root` with `params`; its wall seconds."""
    runner.write_params(root, params)
    started = time.perf_counter()
    runner.run(["rvpt", "stage", *argv], root, quiet=True)
    return time.perf_counter() - started


def written(path: Path) -> dict:
    return json.loads(path.read_text())


def project(root: Path) -> Path:
    """The probe's project at `root`, made on first use."""
    if root.exists() and not (root / "dvc.yaml").is_file() and any(root.iterdir()):
        raise SystemExit(f"{root} holds something other than a probe's project: name a new folder")
    if root.exists() and not any(root.iterdir()):
        root.rmdir()  # an empty folder given as the scratch folder: runner makes it
    return runner.make_project(root)


def probe(root: Path, base: dict, poisonings: list[str], defenses: list[str]) -> list[list[tuple]]:
    """One world: trains its clean model once, then prints a row per poisoning; returns the cells,
    (val CA, val ASR) per defense."""
    root = project(root)
    if not (root / "models" / "clean" / "pretrain.json").exists():
        stage(root, base, "download")
        seconds = stage(root, base, "pretrain", "--clean")
        accuracy = written(root / "models" / "clean" / "pretrain.json")["clean_accuracy"]
        print(f"clean model (seed {base['seed']}): val CA {accuracy:.3f} ({seconds:.0f} s)", flush=True)
        stage(root, base, "sample")
    print("| attack | rate | lr | steps | " + " | ".join(f"{d} val CA / ASR" for d in defenses) + " |")
    print("|---|---|---|---|" + "---|" * len(defenses), flush=True)
    rows = []
    for spec in poisonings:
        attack, rate, lr, *steps = spec.split(":")
        poisoned = {"lr": float(lr), **({"steps": int(steps[0])} if steps else {})}
        params = runner.merge(base, {"attacks": {attack: {"rate": float(rate)}}, "pretrain": {"poisoned": poisoned}})
        stage(root, params, "poison", "--attack", attack)
        stage(root, params, "pretrain", "--attack", attack)
        cells = []
        for defense in defenses:
            stage(root, params, "tune", "--attack", attack, "--defense", defense)
            tuned = written(root / "defended" / defense / attack / "tune.json")
            cells.append((tuned["val_clean_accuracy"], tuned["val_attack_success_rate"]))
        steps = params["pretrain"]["poisoned"]["steps"]
        print(f"| {attack} | {rate} | {lr} | {steps} | " + " | ".join(f"{ca:.3f} / {asr:.3f}" for ca, asr in cells)
              + " |", flush=True)
        rows.append(cells)
    return rows


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def across_seeds(scratch: Path, base: dict, poisonings: list[str], defenses: list[str], seeds: list[int]) -> None:
    """A probe per world seed, in SCRATCH_DIR/seed-N, then mean +- std of each cell over them."""
    runs = []
    for seed in seeds:
        print(f"\nworld seed {seed}", flush=True)
        runs.append(probe(scratch / f"seed-{seed}", runner.merge(base, {"seed": seed}), poisonings, defenses))
    if len(seeds) < 2:
        return
    print(f"\nmean +- std over world seeds {', '.join(map(str, seeds))}")
    print("| poisoning | " + " | ".join(f"{d} val CA | {d} val ASR" for d in defenses) + " |")
    print("|---|" + "---|---|" * len(defenses))
    for i, spec in enumerate(poisonings):
        cells = [[run[i][j] for run in runs] for j in range(len(defenses))]
        print(f"| {spec} | " + " | ".join(f"{spread([ca for ca, _ in c])} | {spread([asr for _, asr in c])}"
                                          for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scratch", type=Path, help="the probe's project folder (made on first use)")
    parser.add_argument("world", help="YAML merged into params.yaml ('' for none)")
    parser.add_argument("poisonings", nargs="*", help="attack:rate:lr[:steps]")
    parser.add_argument("--quick", action="store_true", help="a tiny world, in about a minute")
    args = parser.parse_args()
    base = runner.default_params()
    if args.quick:  # seconds, for CI: the same code path on a world too small to mean anything
        base = runner.merge(base, runner.QUICK)
        args.poisonings = args.poisonings or [QUICK_POISONING]
    base = runner.merge(base, yaml.safe_load(args.world) or {})
    defenses = os.environ.get("PROBE_DEFENSES", "none,linear_probe").split(",")
    seeds = [int(s) for s in os.environ.get("PROBE_SEEDS", "").split(",") if s.strip()]
    scratch = args.scratch.resolve()
    if seeds:
        across_seeds(scratch, base, args.poisonings, defenses, seeds)
    else:
        probe(scratch, base, args.poisonings, defenses)


if __name__ == "__main__":
    main()
