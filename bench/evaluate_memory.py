"""Peak memory of `evaluate` against the size of the test split: ViT-B-32 (random init) at 224 px,
two attacks (BadNet, Blended), every diagnostic, on fabricated splits of N and 4N images.

    uv run python bench/evaluate_memory.py [--images 128] [--batch 32] [--quick]

Each size gets a throwaway project (the clean model, one backdoored copy per attack, the `none`
defense) and the outputs of the `sample` and `scan` stages that evaluate reads (the scan at its
smallest: it is not measured), made by this process; `evaluate` then runs in a fresh process
inside it, with MLflow logging to a store there, so the peak it reports is evaluate's alone.
Streaming keeps the peak flat; the last line, `peak_rss_ratio <4N over N>`, is what a check reads.
`--quick` takes a tiny ViT at 32 px and 16 and 64 images: the same path in seconds.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from isolated import measured

ATTACKS = ["badnet", "blended"]
SCRIPT = Path(__file__).resolve()  # before fabricate() changes the working folder
TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                            "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
# The scan stage only has to leave scans/scans.json behind: one step, a handful of images.
SMALLEST_SCAN = {"steps": 1, "batch_size": 4, "adjust_every": 1, "check_images": 4, "held_out": 4,
                 "kinds": ["patch"], "defended": "residual"}


def project_params(config: dict, batch: int, threads: int) -> dict:
    """params.yaml of a throwaway project: the repository's, with `config` as the model."""
    import yaml

    import pipeline

    raw = yaml.safe_load((Path(pipeline.__file__).parents[1] / "params.yaml").read_text())
    raw["threads"] = threads
    # preload_max_gib 0: the streamed path, which a split past the limit takes (a smaller one is
    # kept decoded after its first pass, 150 KB per 224 px image).
    raw["data"].update(image_size=config["vision_cfg"]["image_size"], transfer_classes=[], concepts=[],
                       distractors=0, noise=0.0, preload_max_gib=0)
    raw["model"] = {**raw["model"], "name": None, "pretrained": None, "config": config}
    raw["evaluate"].update(batch_size=batch, probe_steps=10)
    raw["sample"]["shots"] = 1
    raw["scan"].update(SMALLEST_SCAN)
    raw["run"] = {"attacks": ATTACKS, "defenses": ["none"]}
    return raw


def write_split(path: Path, rows: int, side: int, classes: int, rng) -> None:
    """`rows` random images, labelled class by class in turn."""
    from PIL import Image

    from pipeline.store import artifacts

    blobs = []
    for _ in range(rows):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG",
                                                                                   compress_level=1)
        blobs.append(buffer.getvalue())
    artifacts.write_table(path, {"image": blobs, "caption": [""] * rows, "label": [i % classes for i in range(rows)],
                                 "poisoned": [False] * rows})


def fabricate(root: Path, images: int, batch: int, threads: int, config: dict) -> None:
    """A project whose upstream outputs exist, so that `sample`, `scan` and `evaluate` alone can run in it."""
    import yaml
    from safetensors.torch import save_file

    from pipeline.config import params as params_module
    from pipeline.methods.attacks import build_attack
    from pipeline.store import artifacts, paths
    from rvpt import models

    os.chdir(root)  # the stages' paths are relative to the project
    Path("params.yaml").write_text(yaml.safe_dump(project_params(config, batch, threads), sort_keys=False))
    params = params_module.load()
    rng, classes, side = np.random.default_rng(0), len(params.data.class_names), params.data.image_size
    paths.DOWNSTREAM.mkdir(parents=True)
    for split, rows in (("test", images), ("val", 2 * batch), ("train", 2 * classes)):
        write_split(paths.DOWNSTREAM / f"{split}.parquet", rows, side, classes, rng)
    model = models.build(params.model.config, seed=0)
    for folder in (paths.CLEAN_MODEL, *(paths.backdoored(a) for a in ATTACKS)):
        models.save(model, params.model.config, folder)
        artifacts.write_json(folder / "pretrain.json", {"mlflow_run_id": "fabricated"})
    for attack in ATTACKS:
        paths.poisoned(attack).mkdir(parents=True)
        save_file(build_attack(params, attack).state_dict(), str(paths.poisoned(attack) / "trigger.safetensors"))
        paths.defended(attack, "none").mkdir(parents=True)
        artifacts.write_json(paths.defended(attack, "none") / "tune.json",
                             {"mlflow_run_id": "fabricated", "kind": "none", "shots": 0, "trainable_params": 0,
                              "trainable_fraction": 0.0})


def upstream() -> None:
    """The shots and the scans, which evaluate reads, made by their own stages in the current folder
    (in this process: only evaluate's process is measured)."""
    import torch

    from pipeline.config import params as params_module
    from pipeline.stages import sample, scan

    params = params_module.load()
    torch.set_num_threads(params.threads)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path.cwd()}/mlflow.db"
    sample.run(params)
    scan.run(params)


def high_water_mib() -> float:
    """This process's peak resident memory. Unlike getrusage's ru_maxrss, which a child inherits
    from the process that forked it, VmHWM starts afresh with each exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(images: int) -> dict:
    """`evaluate` in the project in the current folder."""
    import torch

    from pipeline.stages import evaluate
    from pipeline.config import params as params_module

    params = params_module.load()
    torch.set_num_threads(params.threads)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path.cwd()}/mlflow.db"
    baseline = high_water_mib()
    started = time.perf_counter()
    evaluate.run(params)
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": seconds, "baseline_rss_mib": baseline,
            "peak_rss_mib": high_water_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="N: the smaller split")
    parser.add_argument("--batch", type=int, default=32, help="evaluate.batch_size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny ViT at 32 px, 16 and 64 images, batch 8")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    from rvpt import models

    config, shown = (TINY_VIT, "a tiny ViT at 32 px") if args.quick else (models.named_config("ViT-B-32"),
                                                                         "ViT-B-32 at 224 px")
    if args.quick:
        args.images, args.batch = 16, 8
    rows = []
    for images in (args.images, 4 * args.images):
        with tempfile.TemporaryDirectory() as folder:
            fabricate(Path(folder), images, args.batch, args.threads, config)
            upstream()
            rows.append(measured([str(SCRIPT), "--one", str(images)], f"{images} images", cwd=folder))
    print(f"evaluate, {shown}, attacks {', '.join(ATTACKS)}, batch {args.batch}, {args.threads} threads")
    print("| test images | peak RSS (MiB) | RSS at start (MiB) | wall (s) |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['images']} | {row['peak_rss_mib']:.0f} | {row['baseline_rss_mib']:.0f} | {row['seconds']:.0f} |")
    print(f"peak_rss_ratio {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main()
