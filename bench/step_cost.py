"""Cost of one training step on the paper's architecture: RVPT, plain VPT and full fine-tuning on
ViT-B-32 (random init) at 224 px, b = 50 prompt tokens from block D = 3, batch 32, with
random-resized-crop + flip augmentation, as the paper profile trains.

    uv run python bench/step_cost.py [--threads 2] [--mfu 0.35] [--device cuda --steps 20] [--quick]

Seconds per step are the difference between runs of 1 + `--steps` and 1 steps, divided by
`--steps` (so set-up is not counted), from the fastest of `--repeats` runs of each length (other
load only adds time). On CUDA the forward passes run under bf16 autocast (`--precision auto`, as
the pipeline does) and the encoder's inference throughput at the evaluate batch size is measured too. The frozen-pass rows compare RVPT's shared
prefix (blocks before D run once for both passes) with a frozen pass of its own. FLOPs per step come from torch's
FlopCounterMode; the projection divides them by an assumed share (`--mfu`) of an H100's dense
bf16 peak, for the paper profile's 16 shots x 1,000 classes x 50 epochs. `--quick` runs the same
rows on a tiny ViT at 32 px (batch 8, b = 4, D = 1), one timed step: seconds, and figures that
describe nothing but that model.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from rvpt import compute, models
from rvpt.defenses.loop import DefenderData
from rvpt.defenses.registry import KINDS
from rvpt.defenses.finetune import Config as FinetuneConfig
from rvpt.defenses.prompt_tuning import Config as PromptConfig
from rvpt.images import normalize
from rvpt.prompts import frozen_block_cls, frozen_from_prefix, shared_prefix

SCALE = (0.08, 1.0)
H100_BF16_DENSE = 989e12            # FLOP/s, NVIDIA's H100 SXM datasheet (without sparsity)
TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                            "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@dataclass(frozen=True)
class Shape:
    """The model and the step measured: the paper's, or --quick's tiny stand-in."""

    name: str
    config: dict
    batch: int
    tokens: int        # b: prompt tokens per block
    first_block: int   # D

    @property
    def side(self) -> int:
        return self.config["vision_cfg"]["image_size"]

    @property
    def blocks(self) -> int:
        return self.config["vision_cfg"]["layers"]

    @property
    def paper_steps(self) -> int:
        return 16 * 1000 * 50 // self.batch  # 16-shot ImageNet, 50 epochs


def shape(quick: bool) -> Shape:
    if quick:
        return Shape("a tiny ViT", TINY_VIT, batch=8, tokens=4, first_block=1)
    return Shape("ViT-B-32", models.named_config("ViT-B-32"), batch=32, tokens=50, first_block=3)


def settings(kind: str, placement: compute.Placement, at: Shape):
    common = {"epochs": 1, "batch_size": at.batch, "augment": SCALE, "placement": placement}
    if kind == "finetune":
        return FinetuneConfig(lr=1e-5, weight_decay=0.1, alpha=0.0, first_block=0, **common)
    return PromptConfig(tokens=at.tokens, first_block=at.first_block, alpha=2.0 if kind == "rvpt" else 0.0,
                        margin=-1.0, init_std=0.02, lr=0.002, momentum=0.9, weight_decay=5e-4, **common)


def run(model, kind: str, steps: int, placement: compute.Placement, at: Shape) -> float:
    images = torch.randint(0, 256, (steps * at.batch, 3, at.side, at.side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    data = DefenderData(images, torch.arange(steps * at.batch) % 2, ["banana", "apple"])
    module = KINDS["finetune" if kind == "finetune" else "prompt"]
    started = time.perf_counter()
    module.fit(model, data, models.tokenizer(at.config), ["a photo of a {}."], settings(kind, placement, at),
               desc=None)
    synchronize(placement)
    return time.perf_counter() - started


def synchronize(placement: compute.Placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(model, kind: str, placement: compute.Placement, at: Shape) -> int:
    with FlopCounterMode(display=False) as counter:
        run(model, kind, 1, placement, at)
    return counter.get_total_flops()


def inference_throughput(visual, placement: compute.Placement, side: int, batch: int = 512,
                         repeats: int = 10) -> float:
    """Images/s of the frozen image encoder at evaluate's batch size, after two warm-up passes."""
    images = normalize(torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(2)))
    images = images.to(placement.device)
    with torch.no_grad(), placement.autocast():
        for _ in range(2):
            visual(images)
        synchronize(placement)
        started = time.perf_counter()
        for _ in range(repeats):
            visual(images)
        synchronize(placement)
    return batch * repeats / (time.perf_counter() - started)


def frozen_passes(visual, repeats: int, placement: compute.Placement, at: Shape) -> dict[str, float]:
    images = normalize(torch.rand(at.batch, 3, at.side, at.side, generator=torch.Generator().manual_seed(1)))
    images = images.to(placement.device)
    unshared = f"unshared frozen pass (all {at.blocks} blocks)"
    shared = f"shared: frozen blocks D..{at.blocks - 1} only"
    times = {unshared: [], shared: []}
    with torch.no_grad(), placement.autocast():
        prefix = shared_prefix(visual, images, at.first_block)
        for _ in range(repeats):
            synchronize(placement)
            started = time.perf_counter()
            frozen_block_cls(visual, images, at.first_block)
            synchronize(placement)
            times[unshared].append(time.perf_counter() - started)
            started = time.perf_counter()
            frozen_from_prefix(visual, prefix, at.first_block)
            synchronize(placement)
            times[shared].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def step_rows(model, args, placement: compute.Placement, at: Shape) -> None:
    """A row per defense kind: seconds and FLOPs per step, and what they come to for a paper cell."""
    bf16 = isinstance(placement.autocast(), torch.autocast)
    on = torch.cuda.get_device_name(placement.device) if placement.device.type == "cuda" else f"{args.threads} threads"
    print(f"{at.name} at {at.side} px, batch {at.batch}, b = {at.tokens}, D = {at.first_block}, augmentation on, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {on}")
    print("| defense | s/step (fastest) | GFLOP/step | achieved TFLOP/s | paper cell at this pace (min) "
          "| projected H100 s/step | projected paper cell (min) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    seconds = {}
    for kind in args.kinds:
        run(model, kind, 1, placement, at)          # warm-up: CUDA context, kernels, allocator
        # The fastest of the repeats of each length: other load on the machine only ever adds time.
        long, short = zip(*[(run(model, kind, 1 + args.steps, placement, at), run(model, kind, 1, placement, at))
                            for _ in range(args.repeats)])
        seconds[kind] = (min(long) - min(short)) / args.steps
        flops = step_flops(model, kind, placement, at)
        on_h100 = flops / (H100_BF16_DENSE * args.mfu)
        print(f"| {kind} | {seconds[kind]:.4f} | {flops / 1e9:.0f} | {flops / seconds[kind] / 1e12:.1f} | "
              f"{seconds[kind] * at.paper_steps / 60:.1f} | {on_h100 * 1000:.1f} ms | "
              f"{on_h100 * at.paper_steps / 60:.1f} |")
    if {"rvpt", "finetune"} <= set(seconds):
        print(f"rvpt / finetune step time: {seconds['rvpt'] / seconds['finetune']:.2f}")


def evaluate_cost(model, args, at: Shape) -> None:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.encode_image(torch.zeros(1, 3, at.side, at.side))
    forward = counter.get_total_flops()
    # One scored model of the paper matrix reads ImageNet val clean, perturbed and triggered
    # (50k + 50k + 49.95k), the 10k validation images for the probes, and both transfer sets
    # clean and triggered (2 x (8,677 + 3,669)).
    passes = 50_000 + 50_000 + 49_950 + 10_000 + 2 * (8_677 + 3_669)
    print(f"evaluate: {forward / 1e9:.1f} GFLOP per image forward; {passes:,} forwards per scored model = "
          f"{passes * forward / (H100_BF16_DENSE * args.mfu):.1f} s on an H100 at that MFU (image decoding, "
          f"not measured here, comes on top)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed share of the H100's bf16 peak")
    parser.add_argument("--kinds", nargs="+", default=["rvpt", "vpt", "finetune"], choices=["rvpt", "vpt", "finetune"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    parser.add_argument("--steps", type=int, default=2, help="timed steps beyond the first")
    parser.add_argument("--quick", action="store_true", help="a tiny ViT at 32 px, one timed step, once")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 1, 1
    at = shape(args.quick)
    torch.set_num_threads(args.threads)
    placement = compute.placement(args.device, args.precision)
    model = models.build(at.config, seed=0)
    step_rows(model, args, placement, at)
    model.to(placement.device)
    passes = frozen_passes(model.visual, 3, placement, at)
    for name, value in passes.items():
        print(f"{name}: {value * 1000:.1f} ms per batch")
    unshared, shared = passes.values()
    print(f"shared prefix saves {(unshared - shared) * 1000:.1f} ms per step ({100 * (unshared - shared) / unshared:.0f}% "
          f"of the frozen pass)")
    print(f"projection: {at.paper_steps:,} steps per cell; H100 dense bf16 peak {H100_BF16_DENSE / 1e12:.0f} TFLOP/s "
          f"at an assumed MFU of {args.mfu:.2f}; data loading assumed hidden behind compute")
    if placement.device.type == "cuda":
        print(f"inference: {inference_throughput(model.visual, placement, at.side):,.0f} images/s at batch 512 "
              f"(measured)")
    model.to("cpu")
    evaluate_cost(model, args, at)


if __name__ == "__main__":
    main()
