"""Cost of one contrastive training step of the default world's model (params.yaml's
model.config), training the whole 49,408-row token embedding against training only the rows the
captions use (what rvpt.train.train_clip does), and whether the two give the same weights.

    uv run python bench/pretrain_step.py [--steps 40] [--repeats 3] [--vocabulary 300] [--threads N] [--compile]
                                         [--quick]

The captions draw their tokens from `--vocabulary` distinct ids (the default world's corpus uses
a few dozen). Milliseconds per step are the median over `--repeats` runs of `--steps` steps after
5 warm-up steps, on `threads` CPU threads (params.yaml; `--threads` overrides it), fp32.
`--compile` adds a row for the used rows under torch.compile (`compute.compile: true`), whose
numerics are not eager's, and the seconds its first step takes (the compilation, with the
process's cache cold). `--quick`: 2 steps of 16 captions, once: the same path in seconds.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import yaml

from rvpt import models
from rvpt.train import ClipTrainConfig, _train, train_clip

ROOT = Path(__file__).resolve().parents[1]


def timed(train, model, images, tokens, steps: int, compile: bool = False) -> tuple[float, torch.nn.Module, float]:
    stamps = [time.perf_counter()]
    config = ClipTrainConfig(steps=steps + 5, batch_size=len(images) // (steps + 5), warmup=5, compile=compile)
    train(model, images, tokens, config, on_step=lambda _: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[5]) / steps * 1000, model, stamps[1] - stamps[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocabulary", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 steps of 16 captions, one run")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    threads = args.threads or params["threads"]
    torch.set_num_threads(threads)
    config, batch = params["model"]["config"], params["pretrain"]["clean"]["batch_size"]
    if args.quick:
        args.steps, args.repeats, batch = 2, 1, 16
    side, context = config["vision_cfg"]["image_size"], config["text_cfg"]["context_length"]
    n = batch * (args.steps + 5)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, side, side, generator=generator)
    ids = torch.randperm(49406, generator=generator)[:args.vocabulary]
    words = ids[torch.randint(0, args.vocabulary, (n, context - 2), generator=generator)]
    tokens = torch.cat([torch.full((n, 1), 49406), words, torch.full((n, 1), 49407)], dim=1)
    base = models.build(config, seed=0)

    def whole(model, images, tokens, cfg, on_step):
        return _train(model, images, tokens, cfg, "whole table", None, on_step)

    def used(model, images, tokens, cfg, on_step):
        return train_clip(model, images, tokens, cfg, desc="used rows", on_step=on_step)

    results = {}
    for name, train in (("whole table", whole), ("used rows only", used)):
        runs = [timed(train, copy.deepcopy(base), images, tokens, args.steps) for _ in range(args.repeats)]
        results[name] = (statistics.median(ms for ms, _, _ in runs), runs[0][1])
    same = all(torch.equal(a, b) for a, b in zip(results["whole table"][1].state_dict().values(),
                                                   results["used rows only"][1].state_dict().values()))
    print(f"model {sum(p.numel() for p in base.parameters()):,} parameters, "
          f"token embedding {base.token_embedding.weight.numel():,}; batch {batch}, {threads} threads")
    print("| training | ms/step |\n|---|---|")
    for name, (ms, _) in results.items():
        print(f"| {name} | {ms:.1f} |")
    if args.compile:
        ms, _, first = timed(used, copy.deepcopy(base), images, tokens, args.steps, compile=True)
        print(f"| used rows only, torch.compile | {ms:.1f} (first step {first:.1f} s) |")
    print(f"same weights after {args.steps + 5} steps: {same}")


if __name__ == "__main__":
    main()
