"""Evaluation throughput: images/s of the image encoder over the test split at several batch sizes,
for the plain and the prompted (RVPT) model. Run after `dvc repro`:

    uv run python bench/eval_throughput.py [--attack badnet]

Text class embeddings are computed once per model and cached (ZeroShot.classifier); evaluate
computes each model's clean features once and reuses them for CA, the diagnostics and every
attack row, so the encoder pass measured here is what evaluation spends per image.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline import params as params_module
from pipeline import artifacts, paths
from pipeline.evaluation import load_backdoored, zero_shot
from pipeline.paths import defended
from rvpt import models
from rvpt.defenses import KINDS
from rvpt.zeroshot import image_features

REPEATS = 5  # median of five passes; one pass is a fraction of a second here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", default="badnet")
    args = parser.parse_args()
    params = params_module.load()
    torch.set_num_threads(params.threads)
    table = artifacts.read_table(paths.DOWNSTREAM / "test.parquet", "rvpt stage download")
    images, _ = artifacts.decode_pixels(table, params.data, "test")
    model, _ = load_backdoored(args.attack)
    prompted = KINDS["prompt"].load(model, defended(args.attack, "rvpt"), models.tokenizer(params.model.config),
                                    params.model.templates)
    candidates = {"plain": zero_shot(params, model), "rvpt": prompted}
    print(f"{len(images)} test images, {params.threads} threads, image size {params.data.image_size}")
    print("| model | batch | images/s (median of 5) |")
    print("|---|---|---|")
    for name, candidate in candidates.items():
        for batch in (64, 256, 512, 2048):
            image_features(candidate.encode_image, images[:batch], batch)  # warm-up
            rates = []
            for _ in range(REPEATS):
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
