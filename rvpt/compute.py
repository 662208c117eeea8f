"""Where and how tensors are computed: the device, mixed precision, and data parallelism over
processes started by torchrun (which sets RANK, WORLD_SIZE and MASTER_ADDR for each)."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def device_for(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested, but torch sees no CUDA device")
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast where it pays (CUDA; `auto`), fp32 otherwise: bf16 on this kind of CPU is 15x slower."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(backend: str = "auto") -> None:
    """Joins the process group torchrun set up; a no-op for a single process."""
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_part(batch: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of a global batch, in rank order as open_clip's loss expects.

    Shares are equal when the batch divides evenly (pretraining batches must: features are
    gathered); a few-shot epoch's last short batch splits as evenly as it can.
    """
    return batch if world_size() == 1 else torch.tensor_split(batch, world_size())[rank()]


def average_gradients(parameters) -> None:
    """What DDP does after backward, for trainers that do not wrap a module: mean gradients over processes."""
    if world_size() == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(world_size())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
