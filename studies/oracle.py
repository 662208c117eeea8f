"""The oracle study: does RVPT remove a backdoor that is a surplus feature by construction, and
if not, why?

    uv run python studies/oracle.py run DIR [--world-seeds 0 1] [--defense-seeds 0 1 2] [--quick]
    uv run python studies/oracle.py table DIR

`run` makes one project per world seed, DIR/world-<seed> (`seed` remakes the world, the clean
model, the poisoning and the shots), and runs `dvc repro` there once per defense seed (`tune.seed`,
the defense's own initialisation and batch order), over the default attacks and the handcrafted
oracle, for the defenses below. After each run it keeps that run's results/summary.json as
summary-t<seed>.json and the oracle's mechanism figures as mechanism-t<seed>.json. It resumes:
a run whose files exist is skipped. `table` reads those JSON files only and prints mean ± std
over every run, with attacks that did not implant (undefended test ASR under 50%) set apart.
`--quick` runs a tiny world (studies/runner.py's QUICK) and a smaller matrix (BadNet and the
oracle; none, linear_probe and rvpt): the code path in a few minutes, no finding.

Nothing is chosen here: every defense runs its params.yaml settings (the paper's recipe, or for the
variants one named change), and the trigger is used only to score.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import runner  # noqa: E402

ORACLE = "handcrafted"
DEFENSES = ["none", "linear_probe", "vpt", "rvpt", "rvpt_centred", "rvpt_clipscale", "rvpt_wide", "finetune",
            "finetune_fr"]
IMPLANTED = 0.5
# --quick's matrix: one default attack beside the oracle, and a defense of each way of defending
# (none, a head, prompts); the table shows "-" for the rest.
QUICK_ATTACKS, QUICK_DEFENSES = ["badnet", ORACLE], ["none", "linear_probe", "rvpt"]
KEYS = ("clean_accuracy", "attack_success_rate", "control_attack_success_rate", "target_rate")


def study_params(world_seed: int, defense_seed: int, quick: bool, attacks: list[str] | None = None) -> dict:
    params = runner.default_params()
    update = {"seed": world_seed, "tune": {"seed": defense_seed},
              "run": {"attacks": attacks or [*params["run"]["attacks"], ORACLE], "defenses": DEFENSES}}
    if quick:  # seconds, for CI: the same code path on a world too small to mean anything, and fewer cells
        update |= runner.QUICK | {"run": {"attacks": QUICK_ATTACKS, "defenses": QUICK_DEFENSES}}
    return runner.merge(params, update)


def run(folder: Path, world_seeds: list[int], defense_seeds: list[int], quick: bool,
        attacks: list[str] | None = None) -> None:
    for world in world_seeds:
        project = runner.make_project(folder / f"world-{world}")
        for defense in defense_seeds:
            summary, mechanism = project / f"summary-t{defense}.json", project / f"mechanism-t{defense}.json"
            if summary.is_file() and mechanism.is_file():
                continue
            runner.keep(summary, runner.repro(project, study_params(world, defense, quick, attacks)))
            found = subprocess.run([sys.executable, __file__, "mechanism"], cwd=project, check=True,
                                   capture_output=True, text=True)
            runner.keep(mechanism, json.loads(found.stdout))


def mechanism() -> None:
    """Prints, as JSON, where the oracle's backdoor lives after each defense: the triggered test
    images' push along the edit's embedding direction u (the normalised embedding the zero-shot
    head reads), in standard deviations of the clean images along u. Run in a study's project."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from pipeline.config import params as params_module
    from pipeline.store import paths
    from pipeline.methods.defenses import load_defended
    from pipeline.methods.attacks import load_attack
    from pipeline.scoring.scorer import load_backdoored, open_split
    from pipeline.stages.pretrain import EDIT_FILE
    from rvpt import models
    from rvpt.images import normalize
    from rvpt.zeroshot import unit

    params = params_module.load("params.yaml", {})
    torch.set_num_threads(params.threads)
    target = params.data.class_names.index(params.attacks[ORACLE].target)
    images, index = [], []
    for batch in open_split(params, "test").batches(params.evaluate.batch_size):
        keep = batch.labels != target
        images.append(unit(batch.pixels[keep]))
        index.append(batch.index[keep])
    images, index = torch.cat(images), torch.cat(index)
    attack = load_attack(params, ORACLE)
    triggered = attack.apply(images, index)
    u = load_file(str(paths.backdoored(ORACLE) / EDIT_FILE))["u"]
    model, _ = load_backdoored(ORACLE)
    tokenize = models.tokenizer(params.model.config)
    found = {}
    with torch.no_grad():
        for defense in params.run.defenses:
            defended, _ = load_defended(params, ORACLE, defense, model, tokenize)
            clean, pushed = (F.normalize(defended.encode_image(normalize(x)), dim=-1) @ u for x in (images, triggered))
            found[defense] = {"push": float((pushed - clean).mean() / clean.std()),
                              "clean_mean": float(clean.mean()), "triggered_mean": float(pushed.mean())}
    print(json.dumps(found))


def runs(folder: Path) -> list[tuple[int, int, list[dict], dict]]:
    """(world seed, defense seed, summary rows, mechanism) for every finished run under `folder`."""
    found = []
    for summary in sorted(folder.glob("world-*/summary-t*.json")):
        world, defense = int(summary.parent.name.split("-")[1]), int(summary.stem.split("-t")[1])
        mechanism = summary.with_name(f"mechanism-t{defense}.json")
        if mechanism.is_file():
            found.append((world, defense, json.loads(summary.read_text())["rows"], json.loads(mechanism.read_text())))
    return found


def spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * std:.{digits}f}"


def cells(found, attack: str, defense: str, key: str, implanted_only: bool = True) -> list[float]:
    values = []
    for _, _, rows, _ in found:
        by_key = {(r["attack"], r["defense"]): r for r in rows}
        undefended = by_key.get((attack, "none"), {}).get("attack_success_rate") or 0
        row = by_key.get((attack, defense))
        if row is not None and row.get(key) is not None and (undefended >= IMPLANTED or not implanted_only):
            values.append(row[key])
    return values


def last_block_share(found, defense: str) -> list[float]:
    shares = [row["offset_share"][-1] for _, _, rows, _ in found for row in rows
              if row["attack"] == ORACLE and row["defense"] == defense and row.get("offset_share")]
    return [share for share in shares if share is not None]


def table(folder: Path) -> None:
    found = runs(folder)
    if not found:
        sys.exit(f"{folder}: no finished run (run `studies/oracle.py run {folder}` first)")
    worlds = sorted({world for world, *_ in found})
    print(f"{len(found)} runs: world seeds {worlds}, defense seeds "
          f"{sorted({defense for _, defense, *_ in found})}; test split, mean ± std over runs, %\n")
    print(f"## The oracle ({ORACLE}): a surplus-feature backdoor by construction\n")
    print("| defense | CA | ASR | control ASR | target rate | push along u (clean std) | offset share, last block |")
    print("|---|---|---|---|---|---|---|")
    for defense in DEFENSES:
        pushes = [mechanism[defense]["push"] for *_, mechanism in found if defense in mechanism]
        shares = last_block_share(found, defense)
        print(f"| {defense} | " + " | ".join(spread(cells(found, ORACLE, defense, key, False)) for key in KEYS)
              + f" | {spread(pushes, 1.0)} | {spread(shares, 1.0, 2) if shares else '-'} |")
    attacks = list(dict.fromkeys(row["attack"] for *_, rows, _ in found for row in rows
                                 if row["defense"] == "none" and row["attack"] != ORACLE))
    print("\n## The default attacks: ASR (CA), over the runs where the attack implanted\n")
    print("| attack | implanted runs | " + " | ".join(DEFENSES) + " |")
    print("|---|---|" + "---|" * len(DEFENSES))
    for attack in attacks:
        implanted = len(cells(found, attack, "none", "attack_success_rate"))
        ran = len(cells(found, attack, "none", "attack_success_rate", False))
        row = [f"{spread(cells(found, attack, d, 'attack_success_rate'))} "
               f"({spread(cells(found, attack, d, 'clean_accuracy'))})" for d in DEFENSES] if implanted else \
            ["not implanted"] * len(DEFENSES)
        print(f"| {attack} | {implanted} of {ran} | " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run")
    go.add_argument("folder", type=Path)
    go.add_argument("--world-seeds", type=int, nargs="+", default=[0, 1])
    go.add_argument("--defense-seeds", type=int, nargs="+", default=[0, 1, 2])
    go.add_argument("--quick", action="store_true", help="A tiny world: the code path in seconds, no finding.")
    go.add_argument("--attacks", nargs="+", help="Only these attacks (default: run.attacks and the oracle).")
    show = commands.add_parser("table")
    show.add_argument("folder", type=Path)
    commands.add_parser("mechanism")
    args = parser.parse_args()
    if args.command == "run":
        run(args.folder, args.world_seeds, args.defense_seeds, args.quick, args.attacks)
        table(args.folder)
    elif args.command == "table":
        table(args.folder)
    else:
        mechanism()


if __name__ == "__main__":
    main()
