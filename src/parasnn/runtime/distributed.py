"""Running under ``torchrun``: process group set-up and the reductions the library needs.

Outside torchrun every function here is the single-process identity, so library code
calls them unconditionally. Backend: NCCL when CUDA is available, gloo otherwise.
Results are written by rank 0 only (:func:`is_main_process`).

What is reduced where (so that ``n`` processes, each with a shard of the data, compute
what one process computes on the union of the shards):

* threshold recording of ReLU sites — :func:`threshold_reducer`, the ``reduce=`` hook of
  :func:`parasnn.conversion.stages.convert` / :func:`~parasnn.conversion.stages.quantize_relus`;
* DA-QCFS mean errors, BN batch statistics (differentiably, :func:`all_reduce_sum_differentiable`:
  ``torch.nn.SyncBatchNorm`` refuses CPU tensors), validation losses — :func:`all_reduce_sum`;
* gradients of the calibrated parameters — :func:`average_gradients`;
* accuracies and spike counts of an evaluation — :mod:`parasnn.evaluation.accuracy`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

__all__ = ["collective_timeout", "TIMEOUT_VARIABLE", "init_from_environment", "is_distributed", "rank", "world_size", "is_main_process", "all_reduce_sum",
           "all_reduce_max", "all_reduce_sum_differentiable", "average_gradients", "threshold_reducer",
           "default_device", "shutdown", "process_group", "shard"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


# How long a collective waits for the other processes before it fails (seconds). A worker that
# died (kill -9, out of memory) must not leave the others waiting for the libraries' defaults
# (30 minutes for gloo): they fail with an error after this long, and torchrun stops the rest.
TIMEOUT_VARIABLE = "PARASNN_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 300.0


def collective_timeout() -> datetime.timedelta:
    """The collective timeout: ``$PARASNN_COLLECTIVE_TIMEOUT`` seconds, default 300."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_SECONDS)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r}: expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


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
    dist.init_process_group(backend=backend, timeout=collective_timeout())
    return world_size() > 1


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group. With ``wait``, a barrier first: a rank that destroys its gloo
    group while a peer is still using the connection aborts the peer's process. (After an
    error, ``wait=False``: the peers may never reach the barrier.)"""
    if is_distributed():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group() -> Iterator[bool]:
    """``with process_group() as several:`` — join torchrun's group for the block (a no-op
    outside torchrun) and leave it afterwards; ``several`` is whether there is more than one
    process."""
    several = init_from_environment()
    try:
        yield several
    except BaseException:
        shutdown(wait=False)
        raise
    shutdown()


def shard(dataset: torch.utils.data.Dataset) -> torch.utils.data.Dataset:
    """This process's share of an evaluation set: every ``world_size``-th example from
    ``rank`` on, without the padding of a ``DistributedSampler`` — so counts summed over
    processes are exact. The whole dataset in one process."""
    if world_size() == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(rank(), len(dataset), world_size()))



def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def default_device() -> torch.device:
    """CUDA (this process's local device) when present, else CPU."""
    if torch.cuda.is_available():
        # LOCAL_RANK is read from the environment, not the group: ``--device auto`` is parsed
        # before the process group exists.
        if "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective_device() -> torch.device:
    return default_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def _reduce(values: torch.Tensor, op) -> torch.Tensor:
    if not is_distributed():
        return values
    buffer = values.detach().to(device=_collective_device(), dtype=torch.float64).clone()
    dist.all_reduce(buffer, op=op)
    return buffer.to(device=values.device, dtype=values.dtype)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in float64, so counts stay exact)."""
    return _reduce(values, dist.ReduceOp.SUM if is_distributed() else None)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    return _reduce(values, dist.ReduceOp.MAX if is_distributed() else None)


class _AllReduceSum(torch.autograd.Function):
    """``y = Σ_ranks x``; the gradient of every rank's input is ``Σ_ranks ∂L/∂y`` (each rank's
    loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _reduce(x, dist.ReduceOp.SUM)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _reduce(grad.contiguous(), dist.ReduceOp.SUM)


def all_reduce_sum_differentiable(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes that autograd differentiates through (identity in one process).

    Used for the synchronised BatchNorm statistics of calibration stage 1. Combined with
    :func:`average_gradients` (a mean over processes), the gradients equal those of one
    process on the union of the shards when every shard has the same size.
    """
    if not is_distributed():
        return values
    return _AllReduceSum.apply(values)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over processes (what DDP does).

    Each process's loss is the mean over its shard, so with equal shards the mean of the
    gradients is the gradient of the loss on the whole global batch."""
    if not is_distributed():
        return
    size = world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.copy_(all_reduce_sum(parameter.grad) / size)


def threshold_reducer(statistic) -> Callable[[dict], dict]:
    """The ``reduce=`` hook of :func:`parasnn.conversion.stages.convert` for a
    :class:`~parasnn.conversion.stages.ThresholdStatistic`: partial results ``{site: [value, batches]}``
    are combined over processes — the maximum of the maxima (percentile 100), else the sum of
    the per-batch percentiles — and the batch counts summed.

    The maximum is exactly the single-process value. A percentile is read per batch, so it
    depends on how the data is cut into batches: with ``n`` processes each batch is a shard
    of the global batch, and the average of shard percentiles differs (slightly) from the
    single-process average of global-batch percentiles.
    """
    use_max = statistic.percentile >= 100

    def reduce(partial: dict) -> dict:
        sites = sorted(partial)
        if not sites or not is_distributed():
            return partial
        # One value per site (layer scope) or per channel (channel scope): one flat vector.
        parts = [torch.as_tensor(partial[s][0], dtype=torch.float64).reshape(-1) for s in sites]
        values = torch.cat(parts)
        counts = torch.tensor([float(partial[s][1]) for s in sites], dtype=torch.float64)
        values = all_reduce_max(values) if use_max else all_reduce_sum(values)
        counts = all_reduce_sum(counts)
        pieces = values.split([part.numel() for part in parts])
        return {site: [piece, int(c)] for site, piece, c in zip(sites, pieces, counts.tolist())}

    return reduce
