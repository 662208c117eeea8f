"""The seeded study: queue `dvc exp` runs over data and defense seeds, then print mean ± std.

    uv run python studies/seeds.py queue NAME --data-seeds 0 1 --defense-seeds 0 1 2 [-S key=value ...]
    dvc queue start -j 1        # one worker: two torch jobs on 2 cores slow each other down 10x
    uv run python studies/seeds.py table [NAME ...] [--per-data-seed]   # per attack: mean ± std
    uv run python studies/seeds.py axes [NAME ...] [--per-data-seed]    # a row per study, for sweeps
    uv run python studies/seeds.py --quick      # in a small finished project: one experiment, both tables

Each experiment is named NAME-s<seed>-t<defense seed> and changes only `seed` (world, poisoning,
shots) and `tune.seed` (the defense's own), plus the -S settings every run of NAME shares. The
table groups runs by NAME: test CA and ASR come from `dvc exp show` (results/ca/ and results/asr/), the
validation CA RVPT was tuned for from the MLflow run that tuned each cell. Validation ASR is never
shown here: the defender has no trigger, so nothing is chosen by it. DVC lists experiments under
the commit they ran from: after a new commit, `--rev` names that commit. `--quick` runs one
experiment of a study named `quick` (data seed 0, defense seed 0) at once in the workspace, where
`queue` would queue it, then prints its `table` and `axes` rows: the whole path in seconds when
the project's params already are seed 0 (nothing reruns).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess

EXP_NAME = re.compile(r"(?P<study>.+)-s(?P<seed>\d+)-t(?P<defense_seed>\d+)")
DEFENSES = ("none", "rvpt", "vpt")


def experiment(study: str, seed: int, defense_seed: int, settings: list[str]) -> list[str]:
    """The `dvc exp run` of one (data seed, defense seed) of the study, named after both."""
    return ["dvc", "exp", "run", "-n", f"{study}-s{seed}-t{defense_seed}", "-S", f"seed={seed}",
            "-S", f"tune.seed={defense_seed}"] + [arg for s in settings for arg in ("-S", s)]


def queue(study: str, data_seeds: list[int], defense_seeds: list[int], settings: list[str]) -> None:
    for seed in data_seeds:
        for defense_seed in defense_seeds:
            subprocess.run(experiment(study, seed, defense_seed, settings) + ["--queue"], check=True)
    print("queued; run them one at a time with `dvc queue start -j 1`")


def quick() -> None:
    """One experiment of the study `quick`, run now rather than queued, and its rows of both tables."""
    subprocess.run(experiment("quick", 0, 0, []), check=True, capture_output=True)
    print(table(["quick"]))
    print(axes(["quick"]))


def experiments(studies: list[str], rev: str) -> dict[str, dict]:
    """name -> {"metrics": {attack: {defense: {clean_accuracy, attack_success_rate}}}, "study", "rev": its
    commit} for every finished experiment (a queued or running one shows its baseline's files)."""
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "--rev", rev], capture_output=True,
                                      text=True, check=True).stdout)
    found = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            if (group.get("executor") or {}).get("state", "success") != "success":
                continue
            for entry in group["revs"]:
                name, data = entry.get("name") or "", entry.get("data") or {}
                match = EXP_NAME.fullmatch(name)
                metrics = cells(data.get("metrics") or {})
                if match and metrics and (not studies or match["study"] in studies):
                    found[name] = {"metrics": metrics, "study": match["study"], "rev": entry["rev"]}
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


def validation_accuracy(runs: dict[str, dict]) -> dict[tuple[str, str], float]:
    """(exp name, attack) -> the validation CA of the MLflow run that tuned RVPT for that cell. The
    run is the one the cell's tune.json names in the experiment's outputs: a cell DVC kept from an
    earlier run (unchanged deps) names that earlier run."""
    import mlflow
    from dvc.api import DVCFileSystem
    from mlflow.exceptions import MlflowException

    from pipeline.store.paths import defended
    from pipeline.tracking.location import tracking_uri

    client, out = mlflow.MlflowClient(tracking_uri()), {}
    for name, run in runs.items():
        outputs = DVCFileSystem(".", rev=run["rev"])
        for attack in run["metrics"]:
            # Experiments from before one tune stage per defense kept a folder per cell, defended/<attack>-rvpt.
            path = next((p for p in ((defended(attack, "rvpt") / "tune.json").as_posix(), f"defended/{attack}-rvpt/tune.json")
                         if outputs.exists(p)), None)
            if path is None:
                continue
            try:  # a run missing from this store (another machine's, or deleted) shows as "-"
                metrics = client.get_run(json.loads(outputs.read_text(path))["mlflow_run_id"]).data.metrics
            except MlflowException:
                continue
            if "val_clean_accuracy" in metrics:
                out[(name, attack)] = metrics["val_clean_accuracy"]
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def mean(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f}" if values else "-"


def seed_pair(name: str) -> tuple[int, int]:
    match = EXP_NAME.fullmatch(name)
    return int(match["seed"]), int(match["defense_seed"])


def values(members: dict, attack: str, defense: str, key: str) -> list[float]:
    return [run["metrics"][attack][defense][key] for run in members.values()
            if key in run["metrics"].get(attack, {}).get(defense, {})]


def own_spread(members: dict, attack: str, defense: str, key: str) -> str:
    """The std over defense seeds with the data seed (world, backdoored model, shots) fixed,
    averaged over data seeds: the defense's own variance, apart from the world's."""
    by_seed: dict[int, dict] = {}
    for name, run in members.items():
        by_seed.setdefault(seed_pair(name)[0], {})[name] = run
    groups = [values(runs, attack, defense, key) for runs in by_seed.values()]
    stds = [statistics.stdev(group) for group in groups if len(group) > 1]
    return f"{100 * statistics.mean(stds):.1f}" if stds else "-"


def grouped(studies: list[str], per_data_seed: bool, rev: str) -> tuple[dict[str, dict], dict]:
    """study (or "study s<data seed>") -> {exp name: run}, and RVPT's validation CA per (run, attack)."""
    runs = experiments(studies, rev)
    groups: dict[str, dict] = {}
    for name, run in sorted(runs.items()):
        group = f"{run['study']} s{seed_pair(name)[0]}" if per_data_seed else run["study"]
        groups.setdefault(group, {})[name] = run
    return groups, validation_accuracy(runs)


def table(studies: list[str], per_data_seed: bool = False, rev: str = "HEAD") -> str:
    """Per study and attack: mean ± std over every run, and RVPT's ASR std over defense seeds alone."""
    groups, val = grouped(studies, per_data_seed, rev)
    lines = ["| study | attack | runs (data x defense seeds) | undefended CA / ASR % | RVPT CA / ASR % | "
             "VPT CA / ASR % | RVPT ASR std, defense seeds only | RVPT val CA % |", "|---|---|---|---|---|---|---|---|"]
    for study, members in groups.items():
        seeds = [seed_pair(name) for name in members]
        shape = f"{len(members)} ({len({s for s, _ in seeds})} x {len({t for _, t in seeds})})"
        for attack in next(iter(members.values()))["metrics"]:
            figures = [f"{spread(values(members, attack, defense, 'clean_accuracy'))} / "
                       f"{spread(values(members, attack, defense, 'attack_success_rate'))}" for defense in DEFENSES]
            own = own_spread(members, attack, "rvpt", "attack_success_rate")
            tuned = [val[(n, attack)] for n in members if (n, attack) in val]
            lines.append(f"| {study} | {attack} | {shape} | {' | '.join(figures)} | {own} | {spread(tuned)} |")
    return "\n".join(lines)


def axes(studies: list[str], per_data_seed: bool = False, rev: str = "HEAD") -> str:
    """One row per study: RVPT's test ASR per attack and its CA, each averaged over the study's runs,
    beside the undefended CA; for sweeps of one setting at a time. No column averages ASR over
    attacks: nothing here ranks settings by ASR, which the defender cannot measure."""
    groups, val = grouped(studies, per_data_seed, rev)
    attacks = list(next(iter(next(iter(groups.values())).values()))["metrics"]) if groups else []
    lines = [f"| study | runs | undefended CA % | RVPT val CA % | RVPT CA % | "
             f"{' | '.join(f'{a} ASR %' for a in attacks)} |", "|" + "---|" * (len(attacks) + 5)]
    for study, members in groups.items():
        undefended = [v for a in attacks for v in values(members, a, "none", "clean_accuracy")]
        accuracy = [v for a in attacks for v in values(members, a, "rvpt", "clean_accuracy")]
        tuned = [val[(n, a)] for n in members for a in attacks if (n, a) in val]
        asr = [mean(values(members, a, "rvpt", "attack_success_rate")) for a in attacks]
        lines.append(f"| {study} | {len(members)} | {mean(undefended)} | {mean(tuned)} | {mean(accuracy)} | "
                     f"{' | '.join(asr)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run one experiment now and print its rows")
    commands = parser.add_subparsers(dest="command")
    add = commands.add_parser("queue", help="queue one experiment per (data seed, defense seed)")
    add.add_argument("study")
    add.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1])
    add.add_argument("--defense-seeds", type=int, nargs="+", default=[0, 1, 2])
    add.add_argument("-S", dest="settings", action="append", default=[], help="key=value for every run")
    show = commands.add_parser("table", help="mean ± std over each study's finished experiments")
    sweep = commands.add_parser("axes", help="one row per study: RVPT's ASR per attack and its CA")
    for command in (show, sweep):
        command.add_argument("studies", nargs="*")
        command.add_argument("--per-data-seed", action="store_true", help="group the runs by data seed too")
        command.add_argument("--rev", default="HEAD", help="the commit the experiments were run from")
    args = parser.parse_args()
    if args.quick:
        quick()
    elif args.command is None:
        parser.error("name a command: queue, table or axes (or --quick)")
    elif args.command == "queue":
        queue(args.study, args.data_seeds, args.defense_seeds, args.settings)
    else:
        print((table if args.command == "table" else axes)(args.studies, args.per_data_seed, args.rev))


if __name__ == "__main__":
    main()
