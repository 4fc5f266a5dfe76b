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
* PMSM (``docs/maths.md §6``): ``clip(floor(T·z/θ + 1/2), −T·L⁻, T·L⁺) · (θ/T)``.

Backends: a C++ operator built at first use with :func:`torch.utils.cpp_extension.load_inline`
(``-O3 -march=native``, vectorised; ``-ffp-contract=off`` so that no multiply-add is fused,
which would change the rounding), and a CUDA one built with nvcc the same way
(``--fmad=false``; compiled but not yet run on a GPU — its tests run where one is present).
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

from .if_neuron import IFNeuron
from .pmsm import PolarityMultiSpikeNeuron

__all__ = ["CPU_SOURCE", "CPU_FLAGS", "CUDA_SOURCE", "CUDA_FLAGS", "BuiltKernels", "cpu_kernels", "cuda_kernels",
           "kernels_for", "fused_if_forward", "fused_polarity_forward",
           "reference_if_forward", "reference_polarity_forward", "FusedIFNeuron", "FusedPolarityNeuron",
           "fused_neuron", "FUSED_TYPES"]

CPU_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

// One row: n contiguous elements; out may be x itself (every element is read, then written
// at its own index, so there is no dependence between iterations: ivdep). PER_ELEMENT:
// parameter j belongs to element j (a (B, F) input with per-feature parameters); otherwise
// one value per row (hoisted out of the loop by the compiler).
template <typename T, bool PRE, bool PER_ELEMENT>
static inline void if_row(const T* x, T* out, int64_t n, const T* __restrict pre, const T* __restrict shift,
                          const T* __restrict threshold, const T* __restrict scale, const T steps) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = PER_ELEMENT ? i : 0;
    // The reference's order: (z [+ pre]) * T, + shift, / threshold, floor, clip(0, T), * scale.
    const T charge = PRE ? (x[i] + pre[j]) * steps : x[i] * steps;
    T count = std::floor((charge + shift[j]) / threshold[j]);
    count = count < T(0) ? T(0) : count;  // NaN stays NaN, like torch.clamp
    count = count > steps ? steps : count;
    out[i] = count * scale[j];
  }
}

template <typename T>
static inline void polarity_row(const T* x, T* out, int64_t n, const T threshold, const T lower, const T upper,
                                const T scale, const T steps) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    T count = std::floor(x[i] * steps / threshold + T(0.5));
    count = count < lower ? lower : count;
    count = count > upper ? upper : count;
    out[i] = count * scale;
  }
}

static constexpr int64_t GRAIN = 32768;  // elements per task of the intra-op thread pool

// The output: a fresh tensor, or the input itself where the caller knows it is dead.
static torch::Tensor output_for(const torch::Tensor& x, bool overwrite) {
  return overwrite ? x : torch::empty_like(x);
}

// Parameters are 1 or C values; per element they must all be C contiguous values.
static torch::Tensor expanded(const torch::Tensor& p, int64_t channels) {
  return p.numel() == channels ? p.reshape({-1}).contiguous() : p.reshape({-1}).expand({channels}).contiguous();
}

torch::Tensor if_forward(const torch::Tensor& x, const c10::optional<torch::Tensor>& pre_shift,
                         const torch::Tensor& shift, const torch::Tensor& threshold, const torch::Tensor& scale,
                         int64_t time_steps, bool overwrite) {
  TORCH_CHECK(x.is_contiguous(), "parasnn fused IF: the current must be contiguous");
  const bool pre = pre_shift.has_value();
  for (const auto* p : {&shift, &threshold, &scale, pre ? &*pre_shift : &shift})
    TORCH_CHECK(p->device() == x.device() && p->scalar_type() == x.scalar_type(),
                "parasnn fused IF: parameters must have the current's device and dtype");
  int64_t channels = std::max({shift.numel(), threshold.numel(), scale.numel(), pre ? pre_shift->numel() : 1});
  const int64_t numel = x.numel();
  TORCH_CHECK(channels == 1 || (x.dim() >= 2 && x.size(1) == channels),
              "parasnn fused IF: per-channel parameters need C = current.shape[1]");
  auto out = output_for(x, overwrite);
  if (numel == 0) return out;
  const int64_t batch = x.size(0);
  const int64_t inner = channels > 1 ? numel / (batch * channels) : numel;
  const bool per_element = channels > 1 && inner == 1;
  // Per-row parameters are read at [c * stride] (stride 0: one value for every channel).
  torch::Tensor p_shift = shift, p_threshold = threshold, p_scale = scale, p_pre = pre ? *pre_shift : shift;
  if (per_element) {
    p_shift = expanded(shift, channels), p_threshold = expanded(threshold, channels);
    p_scale = expanded(scale, channels), p_pre = expanded(p_pre, channels);
  } else {
    p_shift = shift.contiguous(), p_threshold = threshold.contiguous(), p_scale = scale.contiguous(),
    p_pre = p_pre.contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "parasnn_fused_if", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t *ps = p_pre.data_ptr<scalar_t>(), *sh = p_shift.data_ptr<scalar_t>();
    const scalar_t *th = p_threshold.data_ptr<scalar_t>(), *sc = p_scale.data_ptr<scalar_t>();
    const scalar_t steps = static_cast<scalar_t>(time_steps);
    if (per_element) {  // rows are samples, parameters run along the row
      at::parallel_for(0, batch, std::max<int64_t>(1, GRAIN / channels), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t at = b * channels;
          if (pre) if_row<scalar_t, true, true>(in + at, o + at, channels, ps, sh, th, sc, steps);
          else if_row<scalar_t, false, true>(in + at, o + at, channels, ps, sh, th, sc, steps);
        }
      });
    } else {  // rows are (sample, channel) planes, one parameter value per row
      const int64_t rows = numel / inner;
      const int64_t s_pre = p_pre.numel() > 1, s_shift = p_shift.numel() > 1;
      const int64_t s_threshold = p_threshold.numel() > 1, s_scale = p_scale.numel() > 1;
      at::parallel_for(0, rows, std::max<int64_t>(1, GRAIN / inner), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t c = r % channels, at = r * inner;
          if (pre) if_row<scalar_t, true, false>(in + at, o + at, inner, ps + c * s_pre, sh + c * s_shift,
                                                 th + c * s_threshold, sc + c * s_scale, steps);
          else if_row<scalar_t, false, false>(in + at, o + at, inner, ps, sh + c * s_shift,
                                              th + c * s_threshold, sc + c * s_scale, steps);
        }
      });
    }
  });
  return out;
}

torch::Tensor polarity_forward(const torch::Tensor& x, const torch::Tensor& threshold, const torch::Tensor& scale,
                               int64_t lower, int64_t upper, int64_t time_steps, bool overwrite) {
  TORCH_CHECK(x.is_contiguous(), "parasnn fused PMSM: the current must be contiguous");
  TORCH_CHECK(threshold.numel() == 1 && scale.numel() == 1, "parasnn fused PMSM: one threshold per layer");
  for (const auto* p : {&threshold, &scale})
    TORCH_CHECK(p->device() == x.device() && p->scalar_type() == x.scalar_type(),
                "parasnn fused PMSM: parameters must have the current's device and dtype");
  auto out = output_for(x, overwrite);
  const int64_t numel = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "parasnn_fused_polarity", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t th = threshold.item<scalar_t>(), sc = scale.item<scalar_t>();
    const scalar_t lo = static_cast<scalar_t>(lower), hi = static_cast<scalar_t>(upper);
    const scalar_t steps = static_cast<scalar_t>(time_steps);
    at::parallel_for(0, numel, GRAIN, [&](int64_t begin, int64_t end) {
      polarity_row<scalar_t>(in + begin, o + begin, end - begin, th, lo, hi, sc, steps);
    });
  });
  return out;
}
"""

# -ffp-contract=off: no fused multiply-add (it would round once where the reference rounds
# twice). -fno-trapping-math lets GCC vectorise the floor and the selects; it changes no value.
CPU_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math")


CUDA_SOURCE = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

// Element i belongs to channel (i / inner) % channels; a parameter of one value has stride 0.
template <typename T, bool PRE>
__global__ void if_kernel(const T* x, T* out, int64_t numel, int64_t inner, int64_t channels,
                          const T* __restrict__ pre, int64_t s_pre, const T* __restrict__ shift, int64_t s_shift,
                          const T* __restrict__ threshold, int64_t s_threshold, const T* __restrict__ scale,
                          int64_t s_scale, T steps) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)blockDim.x * gridDim.x) {
    const int64_t c = (i / inner) % channels;
    // The reference's order; compiled with --fmad=false, so no multiply-add is fused.
    const T charge = PRE ? (x[i] + pre[c * s_pre]) * steps : x[i] * steps;
    T count = floor((charge + shift[c * s_shift]) / threshold[c * s_threshold]);
    count = count < T(0) ? T(0) : count;
    count = count > steps ? steps : count;
    out[i] = count * scale[c * s_scale];
  }
}

template <typename T>
__global__ void polarity_kernel(const T* x, T* out, int64_t numel, const T* __restrict__ threshold,
                                const T* __restrict__ scale, T lower, T upper, T steps) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)blockDim.x * gridDim.x) {
    T count = floor(x[i] * steps / threshold[0] + T(0.5));
    count = count < lower ? lower : count;
    count = count > upper ? upper : count;
    out[i] = count * scale[0];
  }
}

static int blocks_for(int64_t numel) {
  return (int)std::min<int64_t>((numel + 255) / 256, 65535);
}

torch::Tensor if_forward_cuda(const torch::Tensor& x, const c10::optional<torch::Tensor>& pre_shift,
                              const torch::Tensor& shift, const torch::Tensor& threshold, const torch::Tensor& scale,
                              int64_t time_steps, bool overwrite) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "parasnn fused IF: a contiguous CUDA current is needed");
  const c10::cuda::CUDAGuard guard(x.device());
  const bool pre = pre_shift.has_value();
  for (const auto* p : {&shift, &threshold, &scale, pre ? &*pre_shift : &shift})
    TORCH_CHECK(p->device() == x.device() && p->scalar_type() == x.scalar_type(),
                "parasnn fused IF: parameters must have the current's device and dtype");
  const int64_t channels = std::max({shift.numel(), threshold.numel(), scale.numel(), pre ? pre_shift->numel() : 1});
  TORCH_CHECK(channels == 1 || (x.dim() >= 2 && x.size(1) == channels),
              "parasnn fused IF: per-channel parameters need C = current.shape[1]");
  auto out = overwrite ? x : torch::empty_like(x);
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  const int64_t inner = channels > 1 ? numel / (x.size(0) * channels) : numel;
  auto p_shift = shift.contiguous(), p_threshold = threshold.contiguous(), p_scale = scale.contiguous();
  auto p_pre = pre ? pre_shift->contiguous() : p_shift;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "parasnn_fused_if_cuda", [&] {
    const scalar_t steps = static_cast<scalar_t>(time_steps);
    auto launch = [&](auto kernel) {
      kernel<<<blocks_for(numel), 256, 0, stream>>>(
          x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), numel, inner, channels,
          p_pre.data_ptr<scalar_t>(), (int64_t)(p_pre.numel() > 1), p_shift.data_ptr<scalar_t>(),
          (int64_t)(p_shift.numel() > 1), p_threshold.data_ptr<scalar_t>(), (int64_t)(p_threshold.numel() > 1),
          p_scale.data_ptr<scalar_t>(), (int64_t)(p_scale.numel() > 1), steps);
    };
    if (pre) launch(if_kernel<scalar_t, true>);
    else launch(if_kernel<scalar_t, false>);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

torch::Tensor polarity_forward_cuda(const torch::Tensor& x, const torch::Tensor& threshold,
                                    const torch::Tensor& scale, int64_t lower, int64_t upper, int64_t time_steps,
                                    bool overwrite) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "parasnn fused PMSM: a contiguous CUDA current is needed");
  TORCH_CHECK(threshold.numel() == 1 && scale.numel() == 1, "parasnn fused PMSM: one threshold per layer");
  const c10::cuda::CUDAGuard guard(x.device());
  for (const auto* p : {&threshold, &scale})
    TORCH_CHECK(p->device() == x.device() && p->scalar_type() == x.scalar_type(),
                "parasnn fused PMSM: parameters must have the current's device and dtype");
  auto out = overwrite ? x : torch::empty_like(x);
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "parasnn_fused_polarity_cuda", [&] {
    // θ and θ/T stay on the device (no host synchronisation).
    polarity_kernel<scalar_t><<<blocks_for(numel), 256, 0, stream>>>(
        x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), numel, threshold.data_ptr<scalar_t>(),
        scale.data_ptr<scalar_t>(), static_cast<scalar_t>(lower), static_cast<scalar_t>(upper),
        static_cast<scalar_t>(time_steps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
"""

CUDA_DECLARATIONS = r"""
torch::Tensor if_forward_cuda(const torch::Tensor& x, const c10::optional<torch::Tensor>& pre_shift,
                              const torch::Tensor& shift, const torch::Tensor& threshold, const torch::Tensor& scale,
                              int64_t time_steps, bool overwrite);
torch::Tensor polarity_forward_cuda(const torch::Tensor& x, const torch::Tensor& threshold,
                                    const torch::Tensor& scale, int64_t lower, int64_t upper, int64_t time_steps,
                                    bool overwrite);
"""

# --fmad=false: no fused multiply-add (the reference rounds every operation); IEEE division
# and no fast math are nvcc's defaults.
CUDA_FLAGS = ("-O3", "--fmad=false")


@dataclass(frozen=True)
class BuiltKernels:
    """The compiled operator module and what loading it cost in this process (seconds:
    compilation on the first use on a machine, loading from PyTorch's on-disk cache after)."""

    module: Any
    seconds: float


def _build(kind: str, sources: dict, functions: list[str], flags: dict) -> BuiltKernels | None:
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
    return _build("cpu", {"cpp_sources": CPU_SOURCE}, ["if_forward", "polarity_forward"],
                  {"extra_cflags": list(CPU_FLAGS)})


@functools.lru_cache(maxsize=None)
def cuda_kernels() -> BuiltKernels | None:
    """The fused CUDA operators (nvcc), built on the first CUDA current; ``None`` with a
    one-line warning where they cannot be built. Not exercised on a GPU by this library's
    authors yet: ``tests/test_fused.py`` runs its CUDA cases wherever a GPU is present."""
    return _build("cuda", {"cpp_sources": CUDA_DECLARATIONS, "cuda_sources": CUDA_SOURCE},
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
    """:class:`~parasnn.neurons.IFNeuron` whose parallel inference forward is the fused
    kernel. Everything else (gradients, calibration, serial steps, spike trains) is the
    parent's; build one with :func:`fused_neuron`.

    ``overwrite_input`` (default False) lets the kernel write its output into the input
    current; :func:`parasnn.simulation.compiled.fuse` sets it where the graph proves that
    nothing else reads that current (it saves the allocation and page faults of a fresh
    output, as an in-place ReLU does)."""

    overwrite_input = False

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        constants = self.inference_constants(current, time_steps)
        if constants is None:  # a graph is needed (or dtypes differ): the reference path
            return super().forward(current, time_steps=time_steps)
        pre_shift, shift, threshold, scale = constants
        if current.dtype not in _KERNEL_DTYPES or not current.is_contiguous():
            kernels = None  # (the constants already have the current's dtype)
        else:
            kernels = kernels_for(current)
        if kernels is None:
            return reference_if_forward(current, time_steps=time_steps, pre_shift=pre_shift, shift=shift,
                                        threshold=threshold, scale=scale)
        return kernels[0](current, pre_shift, shift, threshold, scale, time_steps, _overwrite_allowed(self))


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

