"""The multi-basis (MBE) neuron's parallel forward as one fused elementwise kernel, bit-equal
to the reference :func:`parasnn.neurons.mbe.mbe_forward` (docs/maths.md §7, docs/speed.md).

Why: the reference runs the T steps of N bases as ``T`` rounds of about six elementwise
passes over an ``(N, *S)`` tensor, so a GELU of MiniLM costs some 200 memory passes where
the ANN pays one. The kernel keeps every basis's membrane and output in registers, reads the
input once and writes the output once; its arithmetic is the reference's, operation by
operation and in the same order (the sources and flags are in
:mod:`parasnn.neurons.fused_sources`), so the outputs and the spike counts are the same
bits (``tests/test_fused_mbe.py``).

:func:`fused_mbe_forward` and :func:`fused_mbe_spike_count` have the signatures of
:func:`~parasnn.neurons.mbe.mbe_forward` and :func:`~parasnn.neurons.mbe.mbe_spike_count`.
They take the reference path where the kernel does not apply: a graph is being recorded
(the kernel has no backward), the input is not a contiguous float32/float64 CPU or CUDA
tensor, the parameters have another dtype or device, or the kernel cannot be built on this
machine (then with a one-line warning, once). The build is cached on disk like the IF
kernels' (:mod:`parasnn.neurons.fused`).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .fused import BuiltKernels, build_kernels
from .fused_sources import CPU_FLAGS, CUDA_FLAGS, MBE_CPU_SOURCE, MBE_CUDA_DECLARATIONS, MBE_CUDA_SOURCE
from .mbe import MBEParameters, check_time_steps, mbe_forward, mbe_spike_count
from .mbe_functions import ScalarFunction, reduce_input, restore_output

__all__ = ["mbe_cpu_kernels", "mbe_cuda_kernels", "fused_mbe_forward", "fused_mbe_spike_count",
           "fused_function_value", "fused_function_spike_count"]


@functools.lru_cache(maxsize=None)
def mbe_cpu_kernels() -> BuiltKernels | None:
    """The fused CPU MBE operator, built (or loaded from the on-disk cache) once per process;
    ``None`` with a one-line warning where it cannot be built."""
    return build_kernels("mbe_cpu", {"cpp_sources": MBE_CPU_SOURCE}, ["mbe_forward", "mbe_exp_forward"],
                         {"extra_cflags": list(CPU_FLAGS)})


@functools.lru_cache(maxsize=None)
def mbe_cuda_kernels() -> BuiltKernels | None:
    """The fused CUDA MBE operator (nvcc ``--fmad=false``); ``None`` with a warning where it
    cannot be built. Its tests run wherever a GPU is present."""
    return build_kernels("mbe_cuda", {"cpp_sources": MBE_CUDA_DECLARATIONS, "cuda_sources": MBE_CUDA_SOURCE},
                         ["mbe_forward_cuda"], {"extra_cflags": ["-O3"], "extra_cuda_cflags": list(CUDA_FLAGS)})


def _kernel_for(x: Tensor, parameters: MBEParameters, *, exp: bool = False) -> Any | None:
    """The operator that applies to ``x`` and ``parameters``, or None (reference path).
    ``exp``: the operator with exp's IEEE-754 split inside (float32 on the CPU only)."""
    if not isinstance(x, Tensor) or not isinstance(parameters, MBEParameters):
        return None  # the reference raises the one-line error
    if x.dtype not in (torch.float32, torch.float64) or not x.is_contiguous():
        return None
    if parameters.threshold.dtype != x.dtype or parameters.threshold.device != x.device:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in parameters.as_dict().values())):
        return None
    if x.device.type == "cpu":
        built = mbe_cpu_kernels()
        if built is None or (exp and x.dtype != torch.float32):
            return None
        return built.module.mbe_exp_forward if exp else built.module.mbe_forward
    if exp:
        return None
    if x.device.type == "cuda":
        built = mbe_cuda_kernels()
        return None if built is None else built.module.mbe_forward_cuda
    return None


def _run(kernel, x: Tensor, parameters: MBEParameters, count: bool) -> Tensor:
    tensors = [getattr(parameters, name).contiguous() for name in MBEParameters.FIELDS]
    return kernel(x, *tensors, count)


def fused_mbe_forward(x: Tensor, *, parameters: MBEParameters, time_steps: int) -> Tensor:
    """:func:`~parasnn.neurons.mbe.mbe_forward` as one kernel: ``f̂(x)``, shape of ``x``, same bits."""
    kernel = _kernel_for(x, parameters)
    if kernel is None:
        return mbe_forward(x, parameters=parameters, time_steps=time_steps)
    check_time_steps(time_steps, parameters)
    return _run(kernel, x, parameters, count=False)


def fused_mbe_spike_count(x: Tensor, *, parameters: MBEParameters, time_steps: int) -> Tensor:
    """:func:`~parasnn.neurons.mbe.mbe_spike_count` as one kernel: spikes per element, summed
    over bases and steps, shape of ``x``."""
    kernel = _kernel_for(x, parameters)
    if kernel is None:
        return mbe_spike_count(x, parameters=parameters, time_steps=time_steps)
    check_time_steps(time_steps, parameters)
    return _run(kernel, x, parameters, count=True)


def fused_function_value(x: Tensor, *, function: ScalarFunction, parameters: MBEParameters,
                         time_steps: int) -> Tensor:
    """``f̂(x)`` of a fitted scalar function: the input reduced (exp, reciprocal, rsqrt), the
    neuron run, the output restored — :func:`~parasnn.neurons.mbe_functions.reduce_input`,
    :func:`~parasnn.neurons.mbe.mbe_forward`, :func:`~parasnn.neurons.mbe_functions.restore_output`
    composed, same bits. For exp on float32 CPU tensors the split runs inside the kernel too
    (softmax's exp is the largest fitted tensor of a transformer, ``(B, heads, L, L)``)."""
    if function is ScalarFunction.EXP:
        kernel = _kernel_for(x, parameters, exp=True)
        if kernel is not None:
            check_time_steps(time_steps, parameters)
            return _run(kernel, x, parameters, count=False)
    neuron_input, exponent = reduce_input(function, x)
    return restore_output(function, fused_mbe_forward(neuron_input, parameters=parameters, time_steps=time_steps),
                          exponent, x)


def fused_function_spike_count(x: Tensor, *, function: ScalarFunction, parameters: MBEParameters,
                               time_steps: int) -> Tensor:
    """Spikes of all bases over the T steps of encoding ``x`` (or its mantissa), shape of ``x``."""
    if function is ScalarFunction.EXP:
        kernel = _kernel_for(x, parameters, exp=True)
        if kernel is not None:
            check_time_steps(time_steps, parameters)
            return _run(kernel, x, parameters, count=True)
    return fused_mbe_spike_count(reduce_input(function, x)[0], parameters=parameters, time_steps=time_steps)
