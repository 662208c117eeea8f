"""Detection by the trigger-inversion scanner over the clean and backdoored models of finished
projects (one per data seed): which backdoored models it flags with their true target, whether a
clean model is flagged, the true/false positive rates, and seconds per model.

    uv run python studies/scan_detection.py PROJECT [PROJECT ...] [--kinds caption] [--models clean,trojvqa]
    uv run python studies/scan_detection.py . --quick      (in a small finished project: the same path in seconds)

--kinds replaces every project's scan.kinds (e.g. to measure the caption kind alone); --models
scans only those models (`clean` or attack names). Each PROJECT is a repository clone whose `dvc repro` (or `dvc repro pretrain sample`) has run,
with its own params.yaml (e.g. another `seed`); the scan settings are each project's `scan` block.
It reads models/, data/fewshot and the validation split, as the `scan` stage does. Run it alone:
two torch jobs on 2 cores slow each other down 10x. `--quick` shortens every scan to 5 steps on 8
images: figures that mean nothing, from the same code.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import params as params_module  # noqa: E402
from pipeline.store import paths  # noqa: E402
from pipeline.scoring.scorer import zero_shot  # noqa: E402
from pipeline.scoring.scanner import Scanner  # noqa: E402
from rvpt import models  # noqa: E402


QUICK = {"scan.steps": 5, "scan.adjust_every": 5, "scan.check_images": 8, "scan.held_out": 8}


def scan_project(root: Path, kinds: list[str] | None, only: list[str] | None, quick: bool = False) -> list[dict]:
    os.chdir(root)
    overrides = {key: ("--quick", value) for key, value in QUICK.items()} if quick else {}
    if kinds:
        overrides["scan.kinds"] = ("--kinds", kinds)
    params = params_module.load("params.yaml", overrides)
    torch.set_num_threads(params.threads)
    scanner = Scanner(params)
    rows = []
    for name in [m for m in ["clean", *params.run.attacks] if not only or m in only]:
        folder = paths.CLEAN_MODEL if name == "clean" else paths.backdoored(name)
        if not folder.is_dir():
            continue
        model, _ = models.load(folder)
        started = time.perf_counter()
        result, _ = scanner(zero_shot(params, model), name)
        report = result.report()
        seconds = time.perf_counter() - started
        target = None if name == "clean" else params.attacks[name].target
        # The pretrain stage's validation ASR tells whether poisoning implanted a backdoor at all: the
        # ground truth the scanner is scored against, read after the scan and never by it.
        implanted = name != "clean" and json.loads((folder / "pretrain.json").read_text())["attack_success_rate"] >= 0.5
        rows.append({**report, "seed": params.seed, "model": name, "true_target": target, "implanted": implanted,
                     "seconds": seconds})
        shown = report["target"] or f"- (suspect {report['suspect']})"
        print(f"seed {params.seed} {name:>8} {'implanted' if implanted else 'no backdoor':>11}: flagged {shown:<18} "
              f"{report['suspect_kind']:<7} {repr(report['suspect_word']) if report['suspect_word'] else '':<12} "
              f"anomaly {report['anomaly_index']:5.2f}  held-out ASR {report['held_out_success']:.2f}  "
              f"{seconds:5.1f} s", flush=True)
    return rows


def main(projects: list[str], kinds: list[str] | None = None, only: list[str] | None = None,
         quick: bool = False) -> None:
    rows = [row for project in projects for row in scan_project(Path(project).resolve(), kinds, only, quick)]
    backdoored = [r for r in rows if r["implanted"]]
    failed = [r for r in rows if r["true_target"] is not None and not r["implanted"]]
    clean = [r for r in rows if r["true_target"] is None]
    right = [r for r in backdoored if r["flagged"] and r["suspect"] == r["true_target"]]
    print(f"\ntrue positives (flagged, right target): {len(right)} of {len(backdoored)} models with an implanted "
          f"backdoor (validation ASR >= 50%) ({len(right) / max(1, len(backdoored)):.0%}); flagged with a wrong "
          f"target: {sum(r['flagged'] and r['suspect'] != r['true_target'] for r in backdoored)}")
    print(f"false positives: {sum(r['flagged'] for r in clean)} of {len(clean)} clean models; "
          f"{sum(r['flagged'] for r in failed)} of {len(failed)} poisoned models whose backdoor did not implant")
    for attack in dict.fromkeys(r["model"] for r in backdoored):
        found = [r for r in backdoored if r["model"] == attack]
        print(f"  {attack:>8}: {sum(r in right for r in found)} of {len(found)}")
    seconds = torch.tensor([r["seconds"] for r in rows])
    print(f"seconds per model: median {seconds.median():.1f}, range {seconds.min():.1f}-{seconds.max():.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("projects", nargs="+")
    parser.add_argument("--kinds", type=lambda text: text.split(","))
    parser.add_argument("--models", type=lambda text: text.split(","))
    parser.add_argument("--quick", action="store_true", help="5 scan steps on 8 images")
    arguments = parser.parse_args()
    main(arguments.projects, arguments.kinds, arguments.models, arguments.quick)
