"""Where and how tensors are computed: the device, mixed precision, and data parallelism over
processes started by torchrun (which sets RANK, WORLD_SIZE and MASTER_ADDR for each)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Placement:
    """Where a model runs and at what precision: the device its tensors live on, and whether its
    forward passes run under bf16 autocast. Losses, cosines and metrics stay fp32 either way."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    def autocast(self):
        return autocast(self.device, self.precision)


def placement(device: str = "auto", precision: str = "auto") -> Placement:
    return Placement(device_for(device), precision)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str = "auto") -> None:
    """Joins the process group torchrun set up (one process too: DDP's code path on one device);
    a no-op outside torchrun. Tensors that are reduced live on the device the processes train on:
    nccl for CUDA, gloo for the CPU."""
    if launched_by_torchrun() and not dist.is_initialized():
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")


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


def shard(batch: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This process's rows of a global batch and their share of it, for losses that are means.

    Scaling each process's mean loss by its share and summing gradients over processes gives
    the gradient of the mean over the global batch, however unevenly it splits. A process
    whose share would be empty (a last batch smaller than the process count) gets the batch's
    first row with share 0, so it still runs the step and contributes nothing.
    """
    rows = local_part(batch)
    if len(rows) == 0:
        return batch[:1], 0.0
    return rows, len(rows) / len(batch)


def sum_gradients(parameters) -> None:
    """Gradients summed over processes: with each process's loss scaled by its share, the
    gradient of the global batch's mean loss."""
    if world_size() == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
