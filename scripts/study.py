"""The seeded study: queue `dvc exp` runs over data and defense seeds, then print mean ± std.

    uv run python scripts/study.py queue NAME --data-seeds 0 1 --defense-seeds 0 1 2 [-S key=value ...]
    dvc queue start -j 1        # one worker: two torch jobs on 2 cores slow each other down 10x
    uv run python scripts/study.py table [NAME ...]

Each experiment is named NAME-s<seed>-t<defense seed> and changes only `seed` (world, poisoning,
shots) and `tune.seed` (the defense's own), plus the -S settings every run of NAME shares. The
table groups runs by NAME: test CA and ASR come from `dvc exp show` (results/ca/ and results/asr/), the
validation CA the defense was tuned for from its MLflow tune run. Validation ASR is never shown
here: the defender has no trigger, so nothing is chosen by it.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess

EXP_NAME = re.compile(r"(?P<study>.+)-s(?P<seed>\d+)-t(?P<defense_seed>\d+)")
DEFENSES = ("none", "rvpt", "vpt")


def queue(study: str, data_seeds: list[int], defense_seeds: list[int], settings: list[str]) -> None:
    for seed in data_seeds:
        for defense_seed in defense_seeds:
            name = f"{study}-s{seed}-t{defense_seed}"
            command = ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"seed={seed}",
                       "-S", f"tune.seed={defense_seed}"] + [arg for s in settings for arg in ("-S", s)]
            subprocess.run(command, check=True)
    print("queued; run them one at a time with `dvc queue start -j 1`")


def experiments(studies: list[str]) -> dict[str, dict]:
    """name -> {"metrics": {attack: {defense: {clean_accuracy, attack_success_rate}}}, "params": params.yaml}
    for every finished experiment."""
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True,
                                      check=True).stdout)
    found = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for rev in group["revs"]:
                name, data = rev.get("name") or "", rev.get("data") or {}
                match = EXP_NAME.fullmatch(name)
                metrics = cells(data.get("metrics") or {})
                if match and metrics and (not studies or match["study"] in studies):
                    found[name] = {"metrics": metrics, "params": data["params"]["params.yaml"]["data"],
                                   "study": match["study"]}
    return found


def cells(files: dict) -> dict:
    """The results/asr/<defense>.json and results/ca/<defense>.json metrics as attack -> defense -> figures."""
    found = {}
    for path, content in files.items():
        match = re.fullmatch(r"results/(asr|ca)/(.+)\.json", path)
        for attack, value in ((content or {}).get("data") or {}).items() if match else ():
            key = "attack_success_rate" if match[1] == "asr" else "clean_accuracy"
            found.setdefault(attack, {}).setdefault(match[2], {})[key] = value
    return found


def validation_accuracy(names: list[str], experiment: str) -> dict[tuple[str, str, str], float]:
    """(exp name, attack, defense) -> validation CA of that experiment's latest tune run."""
    import mlflow

    from pipeline.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    found = client.get_experiment_by_name(experiment)
    out = {}
    for name in names if found else []:
        for run in client.search_runs([found.experiment_id], f"tags.`rvpt.stage` = 'tune' and tags.`dvc.exp` = '{name}'",
                                      order_by=["attributes.start_time ASC"]):
            key = (name, run.data.tags.get("attack"), run.data.tags.get("defense"))
            if "val_clean_accuracy" in run.data.metrics:
                out[key] = run.data.metrics["val_clean_accuracy"]
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def table(studies: list[str]) -> str:
    runs = experiments(studies)
    experiment = next(iter(runs.values()))["params"]["tracking"]["experiment"] if runs else "rvpt"
    val = validation_accuracy(sorted(runs), experiment)
    lines = ["| study | attack | runs (data x defense seeds) | undefended CA / ASR % | RVPT CA / ASR % | "
             "VPT CA / ASR % | RVPT val CA % |", "|---|---|---|---|---|---|---|"]
    for study in sorted({run["study"] for run in runs.values()}):
        members = {name: run for name, run in runs.items() if run["study"] == study}
        seeds = {(EXP_NAME.fullmatch(n)["seed"], EXP_NAME.fullmatch(n)["defense_seed"]) for n in members}
        shape = f"{len(members)} ({len({s for s, _ in seeds})} x {len({t for _, t in seeds})})"
        for attack in next(iter(members.values()))["metrics"]:
            cells = []
            for defense in DEFENSES:
                scores = [run["metrics"][attack].get(defense, {}) for run in members.values()]
                cells.append(f"{spread([s['clean_accuracy'] for s in scores if 'clean_accuracy' in s])} / "
                             f"{spread([s['attack_success_rate'] for s in scores if 'attack_success_rate' in s])}")
            tuned = [val[(n, attack, "rvpt")] for n in members if (n, attack, "rvpt") in val]
            lines.append(f"| {study} | {attack} | {shape} | {' | '.join(cells)} | {spread(tuned)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("queue", help="queue one experiment per (data seed, defense seed)")
    add.add_argument("study")
    add.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1])
    add.add_argument("--defense-seeds", type=int, nargs="+", default=[0, 1, 2])
    add.add_argument("-S", dest="settings", action="append", default=[], help="key=value for every run")
    show = commands.add_parser("table", help="mean ± std over each study's finished experiments")
    show.add_argument("studies", nargs="*")
    args = parser.parse_args()
    if args.command == "queue":
        queue(args.study, args.data_seeds, args.defense_seeds, args.settings)
    else:
        print(table(args.studies))


if __name__ == "__main__":
    main()
