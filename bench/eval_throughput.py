"""Evaluation throughput: images/s of the image encoder over the test split at several batch sizes,
for the plain and the prompted (RVPT) model. Run after `dvc repro`:

    uv run python bench/eval_throughput.py [--attack badnet] [--quick]

`--quick`: two small batch sizes and two passes each, for a small project in seconds.

Text class embeddings are computed once per model and cached (ZeroShot.classifier); evaluate
computes each model's clean features once and reuses them for CA, the diagnostics and every
attack row, so the encoder pass measured here is what evaluation spends per image.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.config import params as params_module
from pipeline.methods.defenses import load_defended
from pipeline.scoring.scorer import load_backdoored, zero_shot
from pipeline.store import artifacts, paths
from rvpt import models
from rvpt.zeroshot import image_features

REPEATS = 5  # median of five passes; one pass is a fraction of a second here
BATCHES = (64, 256, 512, 2048)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", default="badnet")
    parser.add_argument("--quick", action="store_true", help="batches 16 and 64, two passes each")
    args = parser.parse_args()
    batches, repeats = ((16, 64), 2) if args.quick else (BATCHES, REPEATS)
    params = params_module.load()
    torch.set_num_threads(params.threads)
    table = artifacts.read_table(paths.DOWNSTREAM / "test.parquet", "rvpt stage download")
    images, _ = artifacts.decode_pixels(table, params.data, "test")
    model, _ = load_backdoored(args.attack)
    prompted, _ = load_defended(params, args.attack, "rvpt", model, models.tokenizer(params.model.config))
    candidates = {"plain": zero_shot(params, model), "rvpt": prompted}
    print(f"{len(images)} test images, {params.threads} threads, image size {params.data.image_size}")
    print(f"| model | batch | images/s (median of {repeats}) |")
    print("|---|---|---|")
    for name, candidate in candidates.items():
        for batch in batches:
            image_features(candidate.encode_image, images[:batch], batch)  # warm-up
            rates = []
            for _ in range(repeats):
                started = time.perf_counter()
                image_features(candidate.encode_image, images, batch)
                rates.append(len(images) / (time.perf_counter() - started))
            print(f"| {name} | {batch} | {statistics.median(rates):,.0f} |")
    started = time.perf_counter()
    candidates["plain"].classifier(params.data.classes)
    first = time.perf_counter() - started
    started = time.perf_counter()
    candidates["plain"].classifier(params.data.classes)
    print(f"class embeddings: {first * 1000:.1f} ms first, {(time.perf_counter() - started) * 1e6:.0f} us cached")


if __name__ == "__main__":
    main()
