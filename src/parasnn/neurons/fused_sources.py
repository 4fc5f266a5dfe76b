"""The C++ and CUDA sources of the fused spiking kernels (:mod:`parasnn.neurons.fused`)
and their compiler flags. Both evaluate the reference's floating-point operations in the
reference's order; the flags forbid the contractions (fused multiply-add) and fast-math
rewrites that would change a single bit."""

from .fused_gradient_sources import IF_GRADIENT_CPU_SOURCE

__all__ = ["CPU_SOURCE", "CPU_FLAGS", "CUDA_SOURCE", "CUDA_DECLARATIONS", "CUDA_FLAGS", "MBE_CPU_SOURCE",
           "MBE_CUDA_SOURCE", "MBE_CUDA_DECLARATIONS"]

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

""" + IF_GRADIENT_CPU_SOURCE

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


# --------------------------------------------------------------------------- MBE
# The multi-basis neuron (parasnn.neurons.mbe): per element, N bases of T steps each, all in
# registers. Elements are processed in blocks of BLOCK so that the innermost loop runs over
# elements with one (basis, step)'s parameters broadcast: it vectorises, and the input is
# read once from memory. The reference's order per element: u = x·a_n + b_n; for each step
# s = (u >= V_n(t)), u = u − s·r_n(t), o = o + s·d_n(t); then acc = o_1·w_1 (+ o_n·w_n in
# order n = 2..N), f̂ = acc + c. A count mode returns Σ_n Σ_t s instead.

MBE_CPU_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>

static constexpr int64_t BLOCK = 256;

// EXP: the neuron sees the mantissa of exp's IEEE-754 split and its output is scaled back,
// exactly as parasnn.neurons.mbe_functions.reduce_input / restore_output do it in float32:
// z = x·log2(e), E = floor(z), m = z − E, exp(x) ≈ ldexp(f̂(m), clamp(E, −1100, 1100)), the
// exponent an int as torch's .to(int32) makes it (a NaN becomes INT_MIN there) and ldexp
// correctly rounded, as torch.ldexp is.
template <typename T, bool COUNT, bool EXP>
static void mbe_block(const T* __restrict x, T* __restrict out, int64_t n, int64_t bases, int64_t steps,
                      const T* __restrict a, const T* __restrict b, const T* __restrict threshold,
                      const T* __restrict reset, const T* __restrict intensity, const T* __restrict weight,
                      const T bias) {
  T u[BLOCK], o[BLOCK], acc[BLOCK], m[BLOCK];
  int p[BLOCK];
  const T* input = x;
  if (EXP) {
    const T log2e = static_cast<T>(1.4426950408889634);
    for (int64_t i = 0; i < n; ++i) {
      const T z = x[i] * log2e;
      const T e = std::floor(z);
      m[i] = z - e;
      const T clamped = e < T(-1100) ? T(-1100) : (e > T(1100) ? T(1100) : e);
      p[i] = std::isnan(e) ? std::numeric_limits<int>::min() : static_cast<int>(clamped);
    }
    input = m;
  }
  for (int64_t k = 0; k < bases; ++k) {
    const T ak = a[k], bk = b[k];
    for (int64_t i = 0; i < n; ++i) {
      u[i] = input[i] * ak + bk;
      o[i] = T(0);
    }
    for (int64_t t = 0; t < steps; ++t) {
      const T v = threshold[k * steps + t], r = reset[k * steps + t], d = COUNT ? T(1) : intensity[k * steps + t];
      for (int64_t i = 0; i < n; ++i) {
        const T s = u[i] >= v ? T(1) : T(0);
        u[i] = u[i] - s * r;
        o[i] = o[i] + s * d;
      }
    }
    if (COUNT) {  // spike counts are small integers: any order of summation is exact
      for (int64_t i = 0; i < n; ++i) acc[i] = k == 0 ? o[i] : acc[i] + o[i];
    } else {
      const T w = weight[k];
      for (int64_t i = 0; i < n; ++i) acc[i] = k == 0 ? o[i] * w : acc[i] + o[i] * w;
    }
  }
  for (int64_t i = 0; i < n; ++i) out[i] = COUNT ? acc[i] : (EXP ? std::ldexp(acc[i] + bias, p[i]) : acc[i] + bias);
}

static torch::Tensor run_mbe(const torch::Tensor& x, const torch::Tensor& input_scale, const torch::Tensor& input_shift,
                             const torch::Tensor& threshold, const torch::Tensor& reset, const torch::Tensor& intensity,
                             const torch::Tensor& weight, const torch::Tensor& output_bias, bool count, bool exp) {
  TORCH_CHECK(x.is_contiguous(), "parasnn fused MBE: the input must be contiguous");
  for (const auto* p : {&input_scale, &input_shift, &threshold, &reset, &intensity, &weight, &output_bias})
    TORCH_CHECK(p->device() == x.device() && p->scalar_type() == x.scalar_type() && p->is_contiguous(),
                "parasnn fused MBE: parameters must be contiguous, with the input's device and dtype");
  TORCH_CHECK(!exp || x.scalar_type() == at::kFloat, "parasnn fused MBE: the exp kernel is float32 only");
  const int64_t bases = threshold.size(0), steps = threshold.size(1), numel = x.numel();
  auto out = torch::empty_like(x);
  if (numel == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "parasnn_fused_mbe", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t *a = input_scale.data_ptr<scalar_t>(), *b = input_shift.data_ptr<scalar_t>();
    const scalar_t *v = threshold.data_ptr<scalar_t>(), *r = reset.data_ptr<scalar_t>();
    const scalar_t *d = intensity.data_ptr<scalar_t>(), *w = weight.data_ptr<scalar_t>();
    const scalar_t c = output_bias.item<scalar_t>();
    at::parallel_for(0, (numel + BLOCK - 1) / BLOCK, 16, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t at = blk * BLOCK, n = std::min(BLOCK, numel - at);
        if (exp && count) mbe_block<scalar_t, true, true>(in + at, o + at, n, bases, steps, a, b, v, r, d, w, c);
        else if (exp) mbe_block<scalar_t, false, true>(in + at, o + at, n, bases, steps, a, b, v, r, d, w, c);
        else if (count) mbe_block<scalar_t, true, false>(in + at, o + at, n, bases, steps, a, b, v, r, d, w, c);
        else mbe_block<scalar_t, false, false>(in + at, o + at, n, bases, steps, a, b, v, r, d, w, c);
      }
    });
  });
  return out;
}

torch::Tensor mbe_forward(const torch::Tensor& x, const torch::Tensor& input_scale, const torch::Tensor& input_shift,
                          const torch::Tensor& threshold, const torch::Tensor& reset, const torch::Tensor& intensity,
                          const torch::Tensor& weight, const torch::Tensor& output_bias, bool count) {
  return run_mbe(x, input_scale, input_shift, threshold, reset, intensity, weight, output_bias, count, false);
}

torch::Tensor mbe_exp_forward(const torch::Tensor& x, const torch::Tensor& input_scale,
                              const torch::Tensor& input_shift, const torch::Tensor& threshold,
                              const torch::Tensor& reset, const torch::Tensor& intensity, const torch::Tensor& weight,
                              const torch::Tensor& output_bias, bool count) {
  return run_mbe(x, input_scale, input_shift, threshold, reset, intensity, weight, output_bias, count, true);
}
"""

MBE_CUDA_SOURCE = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

template <typename T, bool COUNT>
__global__ void mbe_kernel(const T* x, T* out, int64_t numel, int64_t bases, int64_t steps, const T* a,
                           const T* b, const T* threshold, const T* reset, const T* intensity, const T* weight,
                           const T* bias) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)blockDim.x * gridDim.x) {
    const T xi = x[i];
    T acc = T(0);
    for (int64_t k = 0; k < bases; ++k) {
      T u = xi * a[k] + b[k], o = T(0);
      for (int64_t t = 0; t < steps; ++t) {
        const T s = u >= threshold[k * steps + t] ? T(1) : T(0);
        u = u - s * reset[k * steps + t];
        o = o + s * (COUNT ? T(1) : intensity[k * steps + t]);
      }
      if (COUNT) acc = k == 0 ? o : acc + o;
      else acc = k == 0 ? o * weight[k] : acc + o * weight[k];
    }
    out[i] = COUNT ? acc : acc + bias[0];
  }
}

torch::Tensor mbe_forward_cuda(const torch::Tensor& x, const torch::Tensor& input_scale,
                               const torch::Tensor& input_shift, const torch::Tensor& threshold,
                               const torch::Tensor& reset, const torch::Tensor& intensity, const torch::Tensor& weight,
                               const torch::Tensor& output_bias, bool count) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "parasnn fused MBE: a contiguous CUDA input is needed");
  const c10::cuda::CUDAGuard guard(x.device());
  for (const auto* p : {&input_scale, &input_shift, &threshold, &reset, &intensity, &weight, &output_bias})
    TORCH_CHECK(p->device() == x.device() && p->scalar_type() == x.scalar_type() && p->is_contiguous(),
                "parasnn fused MBE: parameters must be contiguous, with the input's device and dtype");
  auto out = torch::empty_like(x);
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = (int)std::min<int64_t>((numel + 255) / 256, 65535);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "parasnn_fused_mbe_cuda", [&] {
    auto launch = [&](auto kernel) {
      kernel<<<blocks, 256, 0, stream>>>(
          x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), numel, threshold.size(0), threshold.size(1),
          input_scale.data_ptr<scalar_t>(), input_shift.data_ptr<scalar_t>(), threshold.data_ptr<scalar_t>(),
          reset.data_ptr<scalar_t>(), intensity.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
          output_bias.data_ptr<scalar_t>());
    };
    if (count) launch(mbe_kernel<scalar_t, true>);
    else launch(mbe_kernel<scalar_t, false>);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
"""

MBE_CUDA_DECLARATIONS = r"""
torch::Tensor mbe_forward_cuda(const torch::Tensor& x, const torch::Tensor& input_scale,
                               const torch::Tensor& input_shift, const torch::Tensor& threshold,
                               const torch::Tensor& reset, const torch::Tensor& intensity, const torch::Tensor& weight,
                               const torch::Tensor& output_bias, bool count);
"""
