"""The C++ source of the IF neuron's fused gradient (:func:`parasnn.neurons.fused.fused_if_backward`).

It is compiled as part of :data:`parasnn.neurons.fused_sources.CPU_SOURCE`, after the forward
kernels, whose ``GRAIN`` (elements per task of the thread pool) and ``expanded`` (per-channel
parameters as C contiguous values) it uses; the same flags apply (no fused multiply-add), so
it gives the bits of autograd's chain through the unfused neuron (``reference_if_backward``).
"""

__all__ = ["IF_GRADIENT_CPU_SOURCE"]

IF_GRADIENT_CPU_SOURCE = r"""
// The gradient of the parallel IF neuron's output k·s (s = θ_post/T, k the count of
// U = T·(z + ψ_DA)) under the triangle surrogate of integrate_fire.if_count_surrogate, for
// one row, with the operations of the reference's backward chain in its order:
//   U = (z + ψ_DA)·T;  q = (U + ψ)·θ⁻¹;  for r = 1..T:  σ = max(w − |q·r⁻¹ + off|, 0)·peak;
//   dc += σ·r⁻¹;  db += σ;   then g₁ = g·s;  dz = (g₁·dc)·T;  db = g₁·db (written only with BIAS)
// with off = (Δb − θ)·θ⁻¹ and peak = θ⁻¹/w². Steps outermost, so that the loop over the row
// vectorises (the row stays in L1); dz and db hold the running sums until the last loop.
static constexpr int64_t BLOCK = 1024;

template <typename T, bool CURRENT, bool BIAS, bool PER_ELEMENT>
static void if_backward_row(const T* __restrict g, const T* __restrict z, T* __restrict dz,
                                   T* __restrict db, int64_t n, const T* __restrict pre, const T* __restrict shift,
                                   const T* __restrict inverse, const T* __restrict offset,
                                   const T* __restrict peak, const T* __restrict scale, int64_t steps,
                                   const T width) {
  const T t_steps = static_cast<T>(steps);
  if (n > BLOCK) {  // blocks that stay in L1 over the T steps
    for (int64_t at = 0; at < n; at += BLOCK) {
      const int64_t j = PER_ELEMENT ? at : 0;
      if_backward_row<T, CURRENT, BIAS, PER_ELEMENT>(g + at, z + at, dz + at, db + at, std::min(BLOCK, n - at),
                                                     pre + j, shift + j, inverse + j, offset + j, peak + j,
                                                     scale + j, steps, width);
    }
    return;
  }
  for (int64_t r = 1; r <= steps; ++r) {
    // 1.0 / r in double, rounded to T: what torch does with the Python float 1.0 / r.
    const T reciprocal = static_cast<T>(1.0 / static_cast<double>(r));
    const bool first = r == 1;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = PER_ELEMENT ? i : 0;
      const T q = ((z[i] + pre[j]) * t_steps + shift[j]) * inverse[j];
      T slope = width - std::abs(q * reciprocal + offset[j]);
      slope = slope < T(0) ? T(0) : slope;  // NaN stays NaN, like torch.clamp
      slope = slope * peak[j];
      // The reference accumulates into zeros: 0 + x (which turns −0 into +0), then += .
      if (CURRENT) dz[i] = (first ? T(0) : dz[i]) + slope * reciprocal;
      if (BIAS) db[i] = (first ? T(0) : db[i]) + slope;
    }
  }
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = PER_ELEMENT ? i : 0;
    const T g1 = g[i] * scale[j];
    if (CURRENT) dz[i] = (g1 * dz[i]) * t_steps;
    if (BIAS) db[i] = g1 * db[i];
  }
}

template <typename T, bool CURRENT, bool BIAS>
static void if_backward_rows(const T* g, const T* z, T* dz, T* db, int64_t batch, int64_t channels, int64_t inner,
                             const T* const* p, const int64_t* stride, int64_t steps, T width) {
  // p: pre, shift, inverse, offset, peak, scale; each 1 value (stride 0) or one per channel.
  if (channels > 1 && inner == 1) {  // (B, F): parameters run along the row
    at::parallel_for(0, batch, std::max<int64_t>(1, GRAIN / channels), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t at = b * channels;
        if_backward_row<T, CURRENT, BIAS, true>(g + at, z + at, dz + at, db + at, channels, p[0], p[1], p[2], p[3],
                                                p[4], p[5], steps, width);
      }
    });
    return;
  }
  if (channels == 1) {  // one value of every parameter: any split of the elements will do
    at::parallel_for(0, inner, GRAIN, [&](int64_t begin, int64_t end) {
      if_backward_row<T, CURRENT, BIAS, false>(g + begin, z + begin, dz + begin, db + begin, end - begin, p[0], p[1],
                                               p[2], p[3], p[4], p[5], steps, width);
    });
    return;
  }
  const int64_t rows = batch * channels;
  at::parallel_for(0, rows, std::max<int64_t>(1, GRAIN / inner), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r % channels, at = r * inner;
      if_backward_row<T, CURRENT, BIAS, false>(g + at, z + at, dz + at, db + at, inner, p[0] + c * stride[0],
                                               p[1] + c * stride[1], p[2] + c * stride[2], p[3] + c * stride[3],
                                               p[4] + c * stride[4], p[5] + c * stride[5], steps, width);
    }
  });
}

// Returns {dz, db}: either may be empty (0 elements) when not asked for.
std::vector<torch::Tensor> if_backward(const torch::Tensor& grad, const torch::Tensor& z, const torch::Tensor& pre,
                                       const torch::Tensor& shift, const torch::Tensor& inverse,
                                       const torch::Tensor& offset, const torch::Tensor& peak,
                                       const torch::Tensor& scale, int64_t time_steps, double width,
                                       bool current_gradient, bool bias_gradient) {
  TORCH_CHECK(z.is_contiguous() && grad.is_contiguous() && grad.sizes() == z.sizes() && z.dim() >= 1,
              "parasnn fused IF backward: gradient and current must be contiguous, of one shape");
  TORCH_CHECK(time_steps >= 1, "parasnn fused IF backward: time_steps must be >= 1");
  const torch::Tensor* parameters[6] = {&pre, &shift, &inverse, &offset, &peak, &scale};
  int64_t channels = 1;
  for (const auto* p : parameters) {
    TORCH_CHECK(p->device() == z.device() && p->scalar_type() == z.scalar_type(),
                "parasnn fused IF backward: tensors must have the current's device and dtype");
    channels = std::max(channels, p->numel());
  }
  TORCH_CHECK(grad.device() == z.device() && grad.scalar_type() == z.scalar_type(),
              "parasnn fused IF backward: the gradient must have the current's device and dtype");
  TORCH_CHECK(channels == 1 || (z.dim() >= 2 && z.size(1) == channels),
              "parasnn fused IF backward: per-channel parameters need C = current.shape[1]");
  const int64_t numel = z.numel();
  auto empty = torch::empty({0}, z.options());
  auto dz = current_gradient ? torch::empty_like(z) : empty;
  auto db = bias_gradient ? torch::empty_like(z) : empty;
  if (numel == 0 || !(current_gradient || bias_gradient)) return {dz, db};
  const int64_t batch = z.size(0);
  const int64_t inner = channels > 1 ? numel / (batch * channels) : numel;
  const bool per_element = channels > 1 && inner == 1;
  torch::Tensor values[6];
  int64_t stride[6];  // per row: 0 for one value, 1 for one per channel (unused per element)
  for (int k = 0; k < 6; ++k) {
    values[k] = per_element ? expanded(*parameters[k], channels) : parameters[k]->contiguous();
    stride[k] = values[k].numel() > 1;
  }
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "parasnn_fused_if_backward", [&] {
    const scalar_t* p[6];
    for (int k = 0; k < 6; ++k) p[k] = values[k].data_ptr<scalar_t>();
    const scalar_t *gp = grad.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>();
    scalar_t* dzp = current_gradient ? dz.data_ptr<scalar_t>() : nullptr;
    scalar_t* dbp = bias_gradient ? db.data_ptr<scalar_t>() : nullptr;
    const scalar_t w = static_cast<scalar_t>(width);  // as torch rounds the Python float operand
    if (current_gradient && bias_gradient)
      if_backward_rows<scalar_t, true, true>(gp, zp, dzp, dbp, batch, channels, inner, p, stride, time_steps, w);
    else if (current_gradient)
      if_backward_rows<scalar_t, true, false>(gp, zp, dzp, dbp, batch, channels, inner, p, stride, time_steps, w);
    else
      if_backward_rows<scalar_t, false, true>(gp, zp, dzp, dbp, batch, channels, inner, p, stride, time_steps, w);
  });
  return {dz, db};
}
"""
