"""What computed a result: the machine and the software. A rerun is bit-exact on one machine for one
thread count; another CPU rounds its kernels differently, and a GPU differs more, so every summary,
report and MLflow run names what made it."""
from __future__ import annotations

import os
import platform
import resource
from importlib.metadata import version
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (/proc/cpuinfo), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int, device: str, precision: str) -> dict[str, str]:
    """The provenance of a result, as strings (they are MLflow tags too)."""
    import torch

    from rvpt import compute

    where = compute.device_for(device)
    name = torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu"
    resolved = precision if precision != "auto" else ("bf16" if where.type == "cuda" else "fp32")
    return {"cpu": cpu_model(), "cores": str(os.cpu_count()), "threads": str(threads), "device": name,
            "precision": resolved, "torch": torch.__version__, "open_clip": version("open_clip_torch"),
            "python": platform.python_version()}


def peak_memory() -> dict[str, float]:
    """This process's peak resident memory and, where CUDA ran, its peak GPU memory, in GiB."""
    import torch

    peaks = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}  # kB on Linux
    if torch.cuda.is_initialized():
        peaks["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return peaks
