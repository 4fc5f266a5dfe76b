"""Fused parallel spiking activations: each neuron's parallel forward as ONE elementwise
kernel (one read of the input, one write of the output), bit-equal to the unfused maths.

Why: the unfused in-place parallel IF forward (:meth:`parasnn.neurons.IFNeuron.forward`)
is six passes over the activation (``×T``, ``+ψ``, ``/θ``, ``floor``, ``clip``,
``×θ_post/T``) where the ReLU it replaces is one; on memory-bound layers that is the whole
gap between the parallel SNN and the ReLU ANN (``docs/speed.md``).

The kernels evaluate the very floating-point expressions of the reference, in the same
order and precision, so they give the same bits (tests assert ``torch.equal`` against the
reference functions):

* IF (``docs/maths.md §3``):   ``clip(floor((T·(z + ψ_DA) + ψ)/(θ − Δb)), 0, T) · (θ_post/T)``
  (``+ψ_DA`` only when the pre-shift is non-zero, as in the reference);
* PMSM (``docs/maths.md §6``): ``clip(floor(T·z/θ + 1/2), −T·L⁻, T·L⁺) · (θ/T)``;
* the IF neuron's gradient (``docs/maths.md §4c``), for the current and Δb, as autograd
  computes it through the unfused neuron (:func:`reference_if_backward`): what calibration's
  stages bn and bias spend their backward passes on. Unfused, the surrogate alone is ~8·T
  passes over the activation and was ~40 % of a calibration step.

Backends: a C++ operator built at first use with :func:`torch.utils.cpp_extension.load_inline`
(``-O3 -march=native``, vectorised; ``-ffp-contract=off`` so that no multiply-add is fused,
which would change the rounding), and a CUDA one built with nvcc the same way
(``--fmad=false``; compiled but not yet run on a GPU — its tests run where one is present;
the gradient kernel is CPU-only, CUDA takes autograd's graph).
Builds are cached on disk by PyTorch (the ``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``), so only the first process on a machine pays the compilation
(1–5 min; later processes load it in about a second), and in memory by :func:`cpu_kernels`
and :func:`cuda_kernels`. Inputs the operators do not cover (another device, not
float32/float64, not contiguous, parameters of another dtype) and platforms where they
cannot be built take the unfused reference path (the latter with a one-line warning), so a
fused neuron is never wrong, at worst unfused.

Shapes: ``current`` is ``(B, C, *spatial)`` or ``(B, F)``; each IF parameter is a 0-dim
tensor or one value per channel (``(C,)`` or its broadcast view ``(C, 1, …, 1)``), of the
current's dtype.
"""
from __future__ import annotations

import functools
import hashlib
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .fused_sources import CPU_FLAGS, CPU_SOURCE, CUDA_DECLARATIONS, CUDA_FLAGS, CUDA_SOURCE
from .if_neuron import IFNeuron
from .base import per_channel
from .integrate_fire import (check_time_steps, effective_threshold, if_count_surrogate, reduce_to_shape,
                             surrogate_constants)
from .pmsm import PolarityMultiSpikeNeuron

__all__ = ["BuiltKernels", "build_kernels", "cpu_kernels", "cuda_kernels",
           "kernels_for", "fused_if_forward", "fused_polarity_forward", "fused_if_backward", "reference_if_backward",
           "reference_if_forward", "reference_polarity_forward", "FusedIFNeuron", "FusedPolarityNeuron",
           "fused_neuron", "FUSED_TYPES"]

@dataclass(frozen=True)
class BuiltKernels:
    """The compiled operator module and what loading it cost in this process (seconds:
    compilation on the first use on a machine, loading from PyTorch's on-disk cache after)."""

    module: Any
    seconds: float


def build_kernels(kind: str, sources: dict, functions: list[str], flags: dict) -> BuiltKernels | None:
    """``load_inline`` (compiled once per machine, then loaded from PyTorch's cache), or
    ``None`` with a one-line warning where that fails."""
    digest = hashlib.sha1(repr((sources, flags)).encode()).hexdigest()[:12]
    start = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load_inline
        module = load_inline(name=f"parasnn_fused_{kind}_{digest}", functions=functions, **sources, **flags)
    except Exception as error:  # any failure to build means: run unfused, and say so once
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        warnings.warn(f"parasnn: fused {kind} spiking kernels unavailable, using the unfused reference "
                      f"({type(error).__name__}: {reason})", RuntimeWarning, stacklevel=3)
        return None
    return BuiltKernels(module, time.perf_counter() - start)


@functools.lru_cache(maxsize=None)
def cpu_kernels() -> BuiltKernels | None:
    """Build (or load from the on-disk cache) the fused CPU operators once per process.

    Returns ``None``, with a one-line warning, where they cannot be built (no C++ compiler,
    no ninja, a PyTorch without its headers, …): fused neurons then run the reference."""
    return build_kernels("cpu", {"cpp_sources": CPU_SOURCE}, ["if_forward", "polarity_forward", "if_backward"],
                  {"extra_cflags": list(CPU_FLAGS)})


@functools.lru_cache(maxsize=None)
def cuda_kernels() -> BuiltKernels | None:
    """The fused CUDA operators (nvcc), built on the first CUDA current; ``None`` with a
    one-line warning where they cannot be built. Not exercised on a GPU by this library's
    authors yet: ``tests/test_fused.py`` runs its CUDA cases wherever a GPU is present."""
    return build_kernels("cuda", {"cpp_sources": CUDA_DECLARATIONS, "cuda_sources": CUDA_SOURCE},
                  ["if_forward_cuda", "polarity_forward_cuda"],
                  {"extra_cflags": ["-O3"], "extra_cuda_cflags": list(CUDA_FLAGS)})


def kernels_for(current: Tensor) -> tuple[Any, Any] | None:
    """``(if_forward, polarity_forward)`` of the fused operators for ``current``'s device, or
    None (not CPU/CUDA, or they cannot be built)."""
    if current.device.type == "cpu":
        built = cpu_kernels()
        return None if built is None else (built.module.if_forward, built.module.polarity_forward)
    if current.device.type == "cuda":
        built = cuda_kernels()
        return None if built is None else (built.module.if_forward_cuda, built.module.polarity_forward_cuda)
    return None


_KERNEL_DTYPES = (torch.float32, torch.float64)


def _kernel_applies(current: Tensor, parameters: tuple[Tensor, ...]) -> bool:
    return (isinstance(current, Tensor) and current.device.type in ("cpu", "cuda")
            and current.dtype in _KERNEL_DTYPES and current.is_contiguous()
            and all(p.dtype == current.dtype and p.device == current.device for p in parameters))


# --------------------------------------------------------------------------- IF


def reference_if_forward(current: Tensor, *, time_steps: int, pre_shift: Tensor | None, shift: Tensor,
                         threshold: Tensor, scale: Tensor) -> Tensor:
    """The unfused parallel IF output ``clip(floor((T·(z + ψ_DA) + ψ)/θ), 0, T)·scale``, in
    one fresh buffer: the in-place inference path of :class:`~parasnn.neurons.IFNeuron`
    (``threshold`` is the effective ``θ − Δb``, ``scale`` is ``θ_post/T``; every parameter
    already viewed to broadcast against ``current``; ``pre_shift=None`` skips the pass)."""
    return IFNeuron.count_in_place(current, time_steps, (pre_shift, shift, threshold, scale)).mul_(scale)


def fused_if_forward(current: Tensor, *, time_steps: int, pre_shift: Tensor | None, shift: Tensor,
                     threshold: Tensor, scale: Tensor, overwrite_input: bool = False) -> Tensor:
    """:func:`reference_if_forward` as one kernel (same signature, same bits). Falls back to
    the reference for inputs the kernel does not cover (see the module docstring).
    ``overwrite_input``: write the output into ``current`` (its caller knows nothing else
    reads it) instead of a fresh tensor, where the kernel applies."""
    parameters = (shift, threshold, scale) + (() if pre_shift is None else (pre_shift,))
    kernels = kernels_for(current) if _kernel_applies(current, parameters) else None
    if kernels is None:
        return reference_if_forward(current, time_steps=time_steps, pre_shift=pre_shift, shift=shift,
                                    threshold=threshold, scale=scale)
    return kernels[0](current, pre_shift, shift, threshold, scale, time_steps, overwrite_input)


def _overwrite_allowed(neuron: torch.nn.Module) -> bool:
    """Whether ``neuron`` may write into its input now: :func:`parasnn.simulation.compiled.fuse`
    found the input dead after the neuron (``overwrite_input``), and no hook could be
    holding it (a hook on the neuron, or a global module hook)."""
    return (neuron.overwrite_input and not neuron._forward_pre_hooks and not neuron._forward_hooks
            and not _global_hooks())


def _global_hooks() -> bool:
    module = torch.nn.modules.module
    return any(getattr(module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks"))


class FusedIFNeuron(IFNeuron):
    """:class:`~parasnn.neurons.IFNeuron` whose parallel forward is the fused kernel, and
    whose gradient, where only the current and Δb need one (calibration's stages bn and
    bias), is the fused backward kernel (:func:`fused_if_backward`) — the same bits as the
    parent's either way. Everything else (serial steps, spike trains, gradients for θ, ψ,
    θ_post or ψ_DA) is the parent's; build one with :func:`fused_neuron`.

    ``overwrite_input`` (default False) lets the kernel write its output into the input
    current; :func:`parasnn.simulation.compiled.fuse` sets it where the graph proves that
    nothing else reads that current (it saves the allocation and page faults of a fresh
    output, as an in-place ReLU does)."""

    overwrite_input = False

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        constants = self.inference_constants(current, time_steps)
        if constants is None:  # a graph is needed (or dtypes differ)
            trained = self._differentiable_forward(current, time_steps)
            return super().forward(current, time_steps=time_steps) if trained is None else trained
        time_steps = self.counting_steps(time_steps)  # min(T, L) for a neuron keeping L levels
        pre_shift, shift, threshold, scale = constants
        if current.dtype not in _KERNEL_DTYPES or not current.is_contiguous():
            kernels = None  # (the constants already have the current's dtype)
        else:
            kernels = kernels_for(current)
        if kernels is None:
            return reference_if_forward(current, time_steps=time_steps, pre_shift=pre_shift, shift=shift,
                                        threshold=threshold, scale=scale)
        return kernels[0](current, pre_shift, shift, threshold, scale, time_steps, _overwrite_allowed(self))

    def _differentiable_forward(self, current, time_steps: int) -> Tensor | None:
        """The output through :class:`_FusedIFOutput`, or ``None`` where the parent's graph
        must be built: not a CPU float tensor, dtypes differ, a parameter other than Δb needs a
        gradient, the current is not contiguous, or the kernels cannot be built."""
        threshold, shift, amplitude, pre_shift, temporal_bias = self._parameters_tuple()
        fixed = (threshold, shift, amplitude, pre_shift)
        if not (torch.is_grad_enabled() and _kernel_applies(current, fixed + (temporal_bias,))
                and current.device.type == "cpu" and not any(t.requires_grad for t in fixed)):
            return None
        built = cpu_kernels()
        if built is None:
            return None
        steps = self.counting_steps(time_steps)
        check_time_steps(steps)
        # The parent's views and derived values, as its graph computes them.
        threshold, shift, amplitude, pre_shift = (per_channel(t, current) for t in fixed)
        view = per_channel(temporal_bias, current)
        constants = (pre_shift, shift, threshold, amplitude / steps)
        return _FusedIFOutput.apply(current, temporal_bias, view.detach(), built.module.if_forward, constants,
                                    steps, self.surrogate_width)


def _channel_values(parameter: Tensor, shape: torch.Size) -> Tensor | None:
    """``parameter`` as the 1 or C values a kernel reads, when it broadcasts against a current
    of ``shape`` as one value or one per channel (axis 1) — else ``None``."""
    try:
        strides = parameter.expand(shape).stride()
    except RuntimeError:
        return None
    if all(stride == 0 for stride in strides):
        return parameter.reshape(-1)[:1]
    if len(shape) >= 2 and parameter.numel() == shape[1] and all(s == 0 for i, s in enumerate(strides) if i != 1):
        return parameter.reshape(-1)
    return None


def reference_if_backward(grad: Tensor, current: Tensor, *, pre_shift: Tensor, shift: Tensor, threshold: Tensor,
                          temporal_bias: Tensor, scale: Tensor, time_steps: int, width: float,
                          current_gradient: bool = True, bias_gradient: bool = True
                          ) -> tuple[Tensor | None, Tensor | None]:
    """What autograd computes backwards through the IF neuron's differentiable forward
    (:meth:`~parasnn.neurons.IFNeuron.forward` with a graph: ``U = T·(z + ψ_DA)``, the count
    of :func:`~parasnn.neurons.integrate_fire.parallel_if_count`, times ``scale = θ_post/T``),
    written out in its order: ``g₁ = grad·scale``, the surrogate factors of ``U``
    (:func:`~parasnn.neurons.integrate_fire.if_count_surrogate`), ``dz = (g₁·dc)·T``.

    Returns ``(dz, db)``: the gradient for the current ``z`` and, per element, for ``Δb``
    (``None`` where not asked for); the caller reduces ``db`` to Δb's shape. Parameters are
    viewed to broadcast against ``current`` (:func:`~parasnn.neurons.base.per_channel`), and
    ``time_steps`` is the count's (the neuron's ``counting_steps``)."""
    cumulative = time_steps * (current + pre_shift)
    d_charge, d_bias = if_count_surrogate(grad * scale, cumulative, shift=shift, threshold=threshold,
                                          temporal_bias=temporal_bias, time_steps=time_steps, width=width,
                                          bias_gradient=bias_gradient)
    return (d_charge * time_steps if current_gradient else None), d_bias


def fused_if_backward(grad: Tensor, current: Tensor, *, pre_shift: Tensor, shift: Tensor, threshold: Tensor,
                      temporal_bias: Tensor, scale: Tensor, time_steps: int, width: float,
                      current_gradient: bool = True, bias_gradient: bool = True
                      ) -> tuple[Tensor | None, Tensor | None]:
    """:func:`reference_if_backward` as one CPU kernel (same signature, same bits): one read
    of the gradient and of ``z``, one write per result, the T steps on a block held in cache,
    where the reference makes ~8·T passes over the activation. The reference where the kernel
    does not apply (CUDA: no kernel written yet; other dtypes; a parameter that is not 0-dim
    or per channel) or cannot be built."""
    shape = current.shape
    inverse, offset, peak = surrogate_constants(threshold, temporal_bias, width=width)
    values = [_channel_values(p, shape) for p in (pre_shift, shift, inverse, offset, peak, scale)]
    applies = (current.device.type == "cpu" and current.dim() >= 1 and grad.shape == shape
               and all(v is not None for v in values) and _kernel_applies(current, tuple(values) + (grad,)))
    built = cpu_kernels() if applies else None
    if built is None:
        return reference_if_backward(grad, current, pre_shift=pre_shift, shift=shift, threshold=threshold,
                                     temporal_bias=temporal_bias, scale=scale, time_steps=time_steps, width=width,
                                     current_gradient=current_gradient, bias_gradient=bias_gradient)
    d_current, d_bias = built.module.if_backward(grad.contiguous(), current, *values, time_steps, float(width),
                                                 current_gradient, bias_gradient)
    return (d_current if current_gradient else None), (d_bias if bias_gradient else None)


class _FusedIFOutput(torch.autograd.Function):
    """The IF neuron's differentiable parallel output ``count·θ_post/T``: forward by the
    inference kernel (the same bits as the unfused graph: the ``+ψ_DA`` pass is kept even
    when ψ_DA is zero, as the graph does), backward by :func:`fused_if_backward`. Gradients
    for the current and for Δb only (:meth:`FusedIFNeuron.forward` checks that nothing else
    needs one)."""

    @staticmethod
    def forward(ctx, current, temporal_bias, view, kernel, constants, time_steps, width):
        pre_shift, shift, threshold, scale = constants
        ctx.save_for_backward(current)
        ctx.view, ctx.constants, ctx.time_steps, ctx.width = view, constants, time_steps, width
        ctx.bias_shape = temporal_bias.shape
        effective = effective_threshold(threshold, view)
        return kernel(current, pre_shift, shift, effective, scale, time_steps, False)

    @staticmethod
    @once_differentiable  # a second derivative through the kernel is an error, not a silent zero
    def backward(ctx, grad):
        (current,) = ctx.saved_tensors
        pre_shift, shift, threshold, scale = ctx.constants
        needs_current, needs_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d_current, d_bias = fused_if_backward(grad, current, pre_shift=pre_shift, shift=shift,
                                              threshold=threshold, temporal_bias=ctx.view, scale=scale,
                                              time_steps=ctx.time_steps, width=ctx.width,
                                              current_gradient=needs_current, bias_gradient=needs_bias)
        if d_bias is not None:  # as the graph reduces it: to the (C, 1, …) view, then to (C,)
            d_bias = reduce_to_shape(d_bias, ctx.view).reshape(ctx.bias_shape)
        return d_current, d_bias, None, None, None, None, None


# --------------------------------------------------------------------------- PMSM


def reference_polarity_forward(current: Tensor, *, time_steps: int, threshold: Tensor, negative_levels: int,
                               positive_levels: int) -> Tensor:
    """The unfused parallel PMSM output ``clip(floor(T·z/θ + 1/2), −T·L⁻, T·L⁺)·(θ/T)``
    (``threshold`` θ a 0-dim tensor): :meth:`PolarityMultiSpikeNeuron.forward`'s maths."""
    return PolarityMultiSpikeNeuron.parallel_output(current, time_steps=time_steps, threshold=threshold,
                                                    negative_levels=negative_levels,
                                                    positive_levels=positive_levels)


def fused_polarity_forward(current: Tensor, *, time_steps: int, threshold: Tensor, negative_levels: int,
                           positive_levels: int, overwrite_input: bool = False) -> Tensor:
    """:func:`reference_polarity_forward` as one kernel (same signature, same bits); the
    reference where a graph is needed or the kernel does not apply. ``overwrite_input`` as
    for :func:`fused_if_forward`."""
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
    needs_graph = torch.is_grad_enabled() and (current.requires_grad or threshold.requires_grad)
    kernels = None if needs_graph or not _kernel_applies(current, (threshold,)) else kernels_for(current)
    if kernels is None:
        return reference_polarity_forward(current, time_steps=time_steps, threshold=threshold,
                                          negative_levels=negative_levels, positive_levels=positive_levels)
    # θ/T as the reference computes it (a tensor division), so the scale has the same bits.
    scale = threshold / time_steps
    return kernels[1](current, threshold, scale, -time_steps * negative_levels, time_steps * positive_levels,
                      time_steps, overwrite_input)


class FusedPolarityNeuron(PolarityMultiSpikeNeuron):
    """:class:`~parasnn.neurons.PolarityMultiSpikeNeuron` with the fused parallel forward
    (``overwrite_input`` as for :class:`FusedIFNeuron`)."""

    overwrite_input = False

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        return fused_polarity_forward(current, time_steps=time_steps, threshold=self.threshold,
                                      negative_levels=self.negative_levels, positive_levels=self.positive_levels,
                                      overwrite_input=_overwrite_allowed(self))


# --------------------------------------------------------------------------- building


FUSED_TYPES = {IFNeuron: FusedIFNeuron, PolarityMultiSpikeNeuron: FusedPolarityNeuron}


def fused_neuron(neuron: torch.nn.Module) -> torch.nn.Module:
    """A fused copy of ``neuron`` sharing its parameters and buffers (same values, no extra
    memory), or ``neuron`` itself when its exact type has no fused kernel."""
    fused_type = FUSED_TYPES.get(type(neuron))
    if fused_type is None:
        return neuron
    copy = fused_type.__new__(fused_type)
    copy.__dict__.update(neuron.__dict__)
    # Own registries (so that re-registering a tensor on one does not touch the other),
    # holding the same tensor objects.
    for registry in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                     "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks"):
        if registry in neuron.__dict__:
            copy.__dict__[registry] = type(neuron.__dict__[registry])(neuron.__dict__[registry])
    copy.__dict__.pop("_parameter_cache", None)  # derived constants: the copy computes its own
    return copy

