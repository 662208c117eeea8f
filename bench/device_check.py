"""One check of a machine before a long run of the paper profile on it: the paper profile, small,
through every stage on this device, then the paper cell's training steps, evaluate's encoder
throughput and a one-process DDP tune step. Writes one JSON and prints one line per figure.

    uv run python bench/device_check.py [--device cuda|cpu] [--out device_check.json] [--quick]

The small run is `rvpt profile paper --small` on the paper's four datasets, fabricated tiny in
their real layouts, with a random ViT-B-32-quickgelu where the `openai` tag resolves
(tests/fabricate.py), then `dvc repro` with real DVC and MLflow: per stage, its wall time and its
peak memory (resident, and on CUDA the GPU's), read from the stage's MLflow runs. On CUDA it runs
the small profile's whole matrix under bf16 autocast; on the CPU one attack (BadNet) and two
defenses (none, RVPT), and the training steps at batch 4, so that it ends in minutes. A line that
needs CUDA says "skipped: no CUDA". `--quick` (CI) skips the small run
(tests/e2e/test_paper_small.py runs it) and times a tiny ViT's steps instead of ViT-B/32's, in
seconds. Figures from a random model describe the machine, not the method.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

import fabricate  # noqa: E402
import step_cost  # noqa: E402
from studies import runner  # noqa: E402

from pipeline.tracking import provenance  # noqa: E402
from rvpt import compute, models  # noqa: E402

STAGES = ("check", "download", "pretrain", "poison", "sample", "tune", "scan", "evaluate", "report")
CPU_MATRIX = {"run.attacks": "[badnet]", "run.defenses": "[none, rvpt]"}
SKIPPED = "skipped: no CUDA"
figures: dict[str, object] = {}


def report(name: str, value, unit: str = "") -> None:
    figures[name] = value
    shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
    print(f"{name}: {shown}{' ' + unit if unit and not str(value).startswith('skipped') else ''}", flush=True)


def command(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def small_project(root: Path, device: str) -> tuple[Path, dict[str, str]]:
    """A project of this repository's pipeline with the small paper profile written for `device`."""
    project = runner.make_project(root / "project")  # the pipeline's code in a git + DVC project
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(project),
           "HF_HUB_CACHE": str(fabricate.openai_cache(root / "hf")), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for argv in (["dvc", "config", "cache.type", "hardlink,symlink"], ["rvpt", "profile", "paper", *fabricate.paper_data(root / "data", train=6, val=2), "--small"]):
        command(argv, project, env)
    settings = {"compute.device": device, **(CPU_MATRIX if device == "cpu" else {})}
    params = project / "params.yaml"
    values = yaml.safe_load(params.read_text())
    for key, value in settings.items():
        *path, last = key.split(".")
        node = values
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    params.write_text(yaml.safe_dump(values, sort_keys=False))
    return project, env


def stage_figures(project: Path, cuda: bool) -> None:
    """Per stage, the wall time of its runs (a tune cell is a run) and their largest peaks."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    name = yaml.safe_load((project / "params.yaml").read_text())["tracking"]["experiment"]
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=5000)
    for name in STAGES:
        mine = [r for r in runs if r.data.tags.get("rvpt.stage") == name]
        report(f"stage {name} wall", sum((r.info.end_time - r.info.start_time) / 1000 for r in mine), "s")
        report(f"stage {name} peak RSS", max((r.data.metrics.get("peak_rss_gib", 0.0) for r in mine), default=0.0),
               "GiB")
        gpu = max((r.data.metrics.get("peak_gpu_memory_gib", 0.0) for r in mine), default=0.0)
        report(f"stage {name} peak GPU memory", gpu if cuda else SKIPPED, "GiB")


def step_figures(placement: compute.Placement, quick: bool) -> None:
    """The paper cell's training step (ViT-B/32 at 224 px, b = 50, D = 3, crops and flips), and the
    frozen encoder's inference throughput."""
    cuda = placement.device.type == "cuda"
    at = step_cost.shape(quick=quick)
    if not cuda and not quick:
        at = step_cost.Shape(at.name, at.config, batch=4, tokens=at.tokens, first_block=at.first_block)
    model = models.build(at.config, seed=0)
    for kind in ("rvpt", "vpt", "finetune"):
        step_cost.run(model, kind, 1, placement, at)  # warm-up: allocations, kernels, autotuning
        seconds = step_cost.run(model, kind, 2, placement, at) - step_cost.run(model, kind, 1, placement, at)
        report(f"step {kind} (batch {at.batch})", max(seconds, 0.0) * 1000, "ms")
    model.to(placement.device)
    batch = 256 if cuda else 16
    rate = step_cost.inference_throughput(model.visual, placement, at.side, batch=batch, repeats=5 if cuda else 1)
    report(f"evaluate encoder throughput (batch {batch})", rate, "images/s")
    model.to("cpu")


def ddp_figure(project: Path, env: dict[str, str], cuda: bool) -> None:
    """One tune cell under torchrun with one process: the process group (nccl) and DDP's code path."""
    if not cuda:
        report("ddp nccl one-process tune", SKIPPED)
        return
    started = time.perf_counter()
    command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "rvpt",
             "stage", "tune", "--attack", "badnet", "--defense", "rvpt", "-S", "tune.seed=1"], project, env)
    report("ddp nccl one-process tune", time.perf_counter() - started, "s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--out", type=Path, default=Path("device_check.json"))
    parser.add_argument("--quick", action="store_true", help="no small run; a tiny ViT's steps (CI)")
    args = parser.parse_args()
    placement = compute.placement(args.device)
    cuda = placement.device.type == "cuda"
    device = "cuda" if cuda else "cpu"
    for key, value in provenance.machine(torch.get_num_threads(), device, "auto").items():
        report(f"machine {key}", value)
    if args.quick:
        report("small paper profile, dvc repro", "skipped: --quick")
    else:
        with tempfile.TemporaryDirectory(prefix="rvpt-device-check-") as scratch:
            project, env = small_project(Path(scratch), device)
            started = time.perf_counter()
            command(["dvc", "repro"], project, env)
            report("small paper profile, dvc repro", time.perf_counter() - started, "s")
            stage_figures(project, cuda)
            ddp_figure(project, env, cuda)
    step_figures(placement, args.quick)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
