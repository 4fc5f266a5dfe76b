"""Running under ``torchrun``: process group set-up and the reductions the library needs.

Outside torchrun every function here is the single-process identity, so library code
calls them unconditionally. Backend: NCCL when CUDA is available, gloo otherwise.
Results are written by rank 0 only (:func:`is_main_process`).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_from_environment", "is_distributed", "rank", "world_size", "is_main_process", "all_reduce_sum",
           "all_reduce_max", "broadcast_module", "default_device", "shutdown"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_environment() -> bool:
    """Join the process group that torchrun describes in the environment; no-op otherwise.
    Returns whether this process is part of a group of more than one."""
    if is_distributed():
        return world_size() > 1
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return world_size() > 1


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def default_device() -> torch.device:
    """CUDA (this process's local device) when present, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else torch.cuda.current_device())
    return torch.device("cpu")


def _reduce(values: torch.Tensor, op) -> torch.Tensor:
    if not is_distributed():
        return values
    device = default_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    buffer = values.detach().to(device=device, dtype=torch.float64).clone()
    dist.all_reduce(buffer, op=op)
    return buffer.to(device=values.device, dtype=values.dtype)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in float64, so counts stay exact)."""
    return _reduce(values, dist.ReduceOp.SUM if is_distributed() else None)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    return _reduce(values, dist.ReduceOp.MAX if is_distributed() else None)


def broadcast_module(module: torch.nn.Module, *, source: int = 0) -> None:
    """Make every process hold rank ``source``'s parameters and buffers."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=source)
