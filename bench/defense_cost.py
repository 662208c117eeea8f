"""Cost of each defense on the same backdoored model and the same shots: wall time per epoch, per
step and in total, peak RSS, and trainable parameters. Run after `dvc repro` (it reads
models/<attack> and data/fewshot):

    uv run python bench/defense_cost.py [--attack badnet] [--quick]

Each defense runs in its own process, so each peak RSS is its own. `--quick` measures only the
defenses of run.defenses, one epoch each: the same path in seconds on a small project.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

from isolated import measured

DEFENSES = ["rvpt", "vpt", "finetune", "cleanclip", "linear_probe", "coop"]


def measure(attack: str, name: str, quick: bool) -> dict:
    import torch

    from pipeline.config import params as params_module
    from pipeline.config.defenses import defense
    from pipeline.methods import defenses
    from pipeline.scoring.scorer import load_backdoored
    from pipeline.stages.tune import defender_data
    from rvpt import models
    from rvpt.defenses.registry import KINDS
    from rvpt.prompts import frozen_block_cls
    from rvpt.images import normalize
    from rvpt.zeroshot import unit

    params = params_module.load(overrides={f"defenses.{name}.epochs": ("--quick", 1)} if quick else None)
    torch.set_num_threads(params.threads)
    spec = defense(params, name)
    kind = KINDS[spec.kind]
    model, _ = load_backdoored(attack)
    data = defender_data(params, name)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    defended, history = defenses.fit(params, name, model, data, models.tokenizer(params.model.config),
                                      params.model.templates, desc=None)
    seconds = time.perf_counter() - started
    steps = len(next(iter(history.values()), [])) or 1
    row = {"defense": name, "kind": spec.kind, "epochs": spec.epochs, "steps": steps, "total_s": seconds,
           "per_epoch_s": seconds / spec.epochs, "per_step_ms": 1000 * seconds / steps,
           "trainable": models.count_parameters(kind.trained(defended).values()),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": rss_before}
    if spec.kind == "prompt":
        # What caching the frozen encoder's CLS tokens saves: one frozen pass instead of one per epoch.
        with torch.no_grad():
            started = time.perf_counter()
            frozen_block_cls(model.visual, normalize(unit(data.images)), spec.first_block)
            row["frozen_pass_s"] = time.perf_counter() - started
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", default="badnet")
    parser.add_argument("--quick", action="store_true", help="run.defenses only, one epoch each")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.attack, args.one, args.quick)))
        return
    names = DEFENSES
    if args.quick:  # a small project configures fewer defenses; measure those it runs
        from pipeline.config import params as params_module

        names = [name for name in DEFENSES if name in params_module.load().run.defenses] or DEFENSES[:1]
    rows = [measured([__file__, "--attack", args.attack, "--one", name] + ["--quick"] * args.quick, name)
            for name in names]
    print(f"defense cost on models/{args.attack}, {rows[0]['steps'] // rows[0]['epochs']} steps/epoch for rvpt")
    print("| defense | epochs | steps | total s | s/epoch | ms/step | peak RSS MiB (before fit) | trainable |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['defense']} | {r['epochs']} | {r['steps']} | {r['total_s']:.1f} | {r['per_epoch_s']:.3f} | "
              f"{r['per_step_ms']:.1f} | {r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) | {r['trainable']:,} |")
    for r in rows:
        if "frozen_pass_s" in r:
            print(f"{r['defense']}: frozen pass over the shots {r['frozen_pass_s'] * 1000:.0f} ms, done once "
                  f"(cached); recomputed every epoch it would add {r['frozen_pass_s'] * r['epochs']:.2f} s "
                  f"to {r['total_s']:.1f} s")


if __name__ == "__main__":
    main()
