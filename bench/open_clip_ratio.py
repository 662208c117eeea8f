"""Pretraining throughput: our `pretrain` loop against open_clip's own trainer (open_clip_train.main),
side by side, on the same model config, batch size, precision (fp32) and thread count:

    uv run --group bench python bench/open_clip_ratio.py [--steps 40] [--batch-size 128] [--quick]

Both train on the same rendered glyph images. open_clip_train reads them from PNG files through
its CSV loader (1 worker, its own transforms); ours decodes the corpus once up front, as the
pretrain stage does, so the ratio is given per training step and end to end (decode included).
Step throughput is the median of the per-step images/s after the first 5 steps. `--quick`: 8 steps
of 16 images, the same path in seconds; without open_clip_train (the `bench` group) it says so
and exits 0, so a quick check passes where that group is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import params as params_module
from rvpt import models
from rvpt.images import decode_many, to_unit_tensor
from rvpt.train import ClipTrainConfig, train_clip
from rvpt.world import GlyphWorld

WARMUP_STEPS = 5
OPEN_CLIP = """
import sys, torch, open_clip
torch.set_num_threads({threads})
open_clip.add_model_config({config!r})
from open_clip_train.main import main
main(sys.argv[1:])
"""


def render(folder: Path, n: int, params) -> tuple[Path, np.ndarray, list[str]]:
    world, rng = GlyphWorld(params.data.classes, params.data.image_size), np.random.default_rng(0)
    rows, pixels, captions = ["filepath\ttitle"], [], []
    for i in range(n):
        sample = world.sample(rng)
        path = folder / f"{i:06d}.png"
        sample.image.save(path)
        rows.append(f"{path}\t{sample.caption}")
        pixels.append(np.asarray(sample.image))
        captions.append(sample.caption)
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv", np.stack(pixels), captions


def open_clip_rates(csv: Path, work: Path, params, steps: int, batch: int) -> list[float]:
    config = work / "rvpt_bench.json"
    config.write_text(json.dumps(params.model.config))
    args = ["--train-data", str(csv), "--dataset-type", "csv", "--csv-img-key", "filepath",
            "--csv-caption-key", "title", "--model", "rvpt_bench", "--batch-size", str(batch), "--epochs", "1",
            "--lr", "2e-3", "--wd", "0.1", "--warmup", "10", "--precision", "fp32", "--workers", "1",
            "--log-every-n-steps", "1", "--logs", str(work / "logs"), "--save-frequency", "0",
            "--zeroshot-frequency", "0", "--val-frequency", "0", "--report-to", "", "--seed", "0", "--name", "bench"]
    code = OPEN_CLIP.format(threads=params.threads, config=str(config))
    env = {**os.environ, "OMP_NUM_THREADS": str(params.threads)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    rates = [float(m) for m in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", out.stdout + out.stderr)]
    if out.returncode != 0 or len(rates) < steps // 2:
        sys.exit(f"open_clip_train failed ({out.returncode}):\n{(out.stdout + out.stderr)[-2000:]}")
    return rates


def our_rates(pixels: np.ndarray, captions: list[str], params, steps: int, batch: int) -> tuple[list[float], float]:
    torch.set_num_threads(params.threads)
    started = time.perf_counter()
    images = to_unit_tensor(pixels)
    tokens = models.tokenizer(params.model.config)(captions)
    prepare = time.perf_counter() - started
    model = models.build(params.model.config, seed=0)
    stamps = [time.perf_counter()]
    config = ClipTrainConfig(steps=steps, batch_size=batch, lr=2e-3, weight_decay=0.1, warmup=10)
    train_clip(model, images, tokens, config, on_step=lambda _: stamps.append(time.perf_counter()))
    return [batch / (b - a) for a, b in zip(stamps, stamps[1:])], prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="8 steps of 16 images")
    args = parser.parse_args()
    if args.quick:
        try:  # the trainer's own module: the package can be there without its dependencies
            import open_clip_train.main  # noqa: F401
        except ImportError as error:
            print(f"open_clip_train cannot be imported ({error}; uv sync --group bench): nothing to compare")
            return
        args.steps, args.batch_size = 8, 16
    params = params_module.load()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv, pixels, captions = render(work, args.steps * args.batch_size, params)
        theirs = statistics.median(open_clip_rates(csv, work, params, args.steps, args.batch_size)[WARMUP_STEPS:])
        blobs = [path.read_bytes() for path in sorted(work.glob("*.png"))]
        started = time.perf_counter()
        decode_many(blobs, params.data.image_size, "bench")
        decode = time.perf_counter() - started
    ours_all, prepare = our_rates(pixels, captions, params, args.steps, args.batch_size)
    ours = statistics.median(ours_all[WARMUP_STEPS:])
    end_to_end = len(blobs) / (decode + prepare + len(blobs) / ours)
    print(f"model {params.model.config['vision_cfg']}, context {params.model.config['text_cfg']['context_length']}, "
          f"batch {args.batch_size}, fp32, {params.threads} threads, {args.steps} steps")
    print(f"open_clip_train: {theirs:,.0f} img/s")
    print(f"rvpt pretrain:   {ours:,.0f} img/s training steps; {end_to_end:,.0f} img/s counting its up-front "
          f"decode ({decode:.2f} s) and tokenizing ({prepare:.2f} s) of the {len(blobs):,} PNGs")
    print(f"ratio (ours / open_clip): {ours / theirs:.2f}x per step, {end_to_end / theirs:.2f}x end to end")


if __name__ == "__main__":
    main()
