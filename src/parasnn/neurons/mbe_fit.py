"""Fitting an MBE neuron to a scalar function, once, offline and deterministically, without
touching any network weight (docs/maths.md §7; "Training-Free ANN-to-SNN Conversion for
High-Performance Spiking Transformer", arXiv 2508.07710). Fits are cached on disk.

The method (ours; the paper does not give one)
----------------------------------------------
Every basis is a *binary-coding* basis: ``V_n(t) = r_n(t) = 2^−t``, the paper's exponential
decay ``α·exp(−t·Δt/τ)`` with ``α = 1`` and ``Δt/τ = ln 2``. Its spikes are the binary digits
of the mapped input ``u = a_n·x + b_n`` on ``[0, 1)``: no spikes below the window, all spikes
above it. With ``d_n(t) = 2^−t`` the basis outputs ``clip(u, 0, 1)`` quantized to T bits — a
*ramp* between two knots. The intensities ``d_n(t)`` are free per ``(n, t)`` (a superset of
the exponential intensity): given the spikes the output is linear in them, so they and the
output bias come from one least-squares solve, and the fit may bend a basis's steps.

1. **Knots, continuous relaxation**: ``f ≈ c + Σ_n w_n·clip((x − l_n)/(h_n − l_n), 0, 1)``, a
   linear spline with 2N knots; the knots ``(l_n, h_n)`` by L-BFGS (the weights by least
   squares inside the loss) from three layouts on the samples' quantiles and eight drawn
   with a fixed seed, the best two polished.
2. **Knots, spiking**: the same knots refined by a coordinate pattern search (the step
   shrinks fourfold per round) on
   the true T-step neuron's least-squares error — it accounts for the quantization.
3. **Orientation**: a basis may be mirrored (``a_n < 0``: fire for inputs *below* the window);
   the fit mirrors a basis where that needs fewer spikes on the samples at no cost in error.
4. **Intensities**: ridge-regularised (1e-12 relative) least squares in float64 for
   ``d_n(t)`` and ``c``; ``w_n = 1`` (it would only rescale ``d_n``). Where the solve fails
   off its samples (digits finer than the samples resolve), the finest steps share one
   binary-decaying coefficient (``_intensities``).

The error is weighted by the input distribution: the samples (calibration activations,
reduced deterministically to ``sample_count`` quantiles) or a uniform grid on an explicit
range; decomposed functions (exp, reciprocal, rsqrt, :mod:`~parasnn.neurons.mbe_functions`)
use a uniform grid on their fixed mantissa interval and need neither.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .mbe import MBENeuron, MBEParameters, check_count, mbe_forward
from .mbe_functions import (ScalarFunction, as_scalar_function, fixed_interval, is_decomposed, reduce_input,
                            restore_output, target_values)

__all__ = ["MBEFit", "fit_mbe", "fit_samples", "binary_encoder", "FIT_VERSION", "DEFAULT_SAMPLE_COUNT"]

FIT_VERSION = 3  # part of the cache key: bump when the method changes
DEFAULT_SAMPLE_COUNT = 4096
_DTYPE = torch.float64
_RIDGE = 1e-12
_CHECK_POINTS = 8193  # the dense grid on which the maximum error is recorded


@dataclass(frozen=True, eq=False)
class MBEFit:
    """A fitted MBE neuron and what it was fitted to.

    ``parameters`` are float64 (cast them with ``parameters.to(dtype)``). ``[lower, upper]``
    is the input range of the fit: the explicit range, the samples' extremes, or the
    mantissa interval of a decomposed function. ``mse`` and ``max_error`` are over the
    weighted fit samples, ``grid_max_error`` on a uniform grid of 8193 points over
    ``[lower, upper]``; all are measured in float64 on the neuron's input, i.e. on the
    mantissa function ``g`` for decomposed functions.
    """

    function: ScalarFunction
    parameters: MBEParameters
    lower: float
    upper: float
    digest: str
    mse: float
    max_error: float
    grid_max_error: float

    @property
    def bases(self) -> int:
        return self.parameters.bases

    @property
    def time_steps(self) -> int:
        return self.parameters.time_steps

    def __call__(self, x: Tensor) -> Tensor:
        """The fitted function on ``x`` (any shape, computed in ``x``'s dtype)."""
        return evaluate_fit(self, x)

    def neuron(self, dtype: torch.dtype = torch.float32) -> MBENeuron:
        """The MBE neuron layer computing the fitted function (decomposition included)."""
        return MBENeuron(self.parameters.to(dtype), function=self.function)

    def to_dict(self) -> dict:
        """JSON-ready: floats as Python floats (``repr`` round-trips float64 exactly)."""
        return {"version": FIT_VERSION, "function": self.function.value, "lower": self.lower, "upper": self.upper,
                "digest": self.digest, "mse": self.mse, "max_error": self.max_error,
                "grid_max_error": self.grid_max_error,
                "parameters": {name: tensor.tolist() for name, tensor in self.parameters.as_dict().items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "MBEFit":
        if data.get("version") != FIT_VERSION:
            raise ValueError(f"MBE fit version {data.get('version')!r} is not {FIT_VERSION}")
        parameters = MBEParameters(**{name: torch.tensor(data["parameters"][name], dtype=_DTYPE)
                                      for name in MBEParameters.FIELDS})
        return cls(function=ScalarFunction(data["function"]), parameters=parameters,
                   lower=float(data["lower"]), upper=float(data["upper"]), digest=str(data["digest"]),
                   mse=float(data["mse"]), max_error=float(data["max_error"]),
                   grid_max_error=float(data["grid_max_error"]))


def evaluate_fit(fit: MBEFit, x: Tensor) -> Tensor:
    """Decompose (if needed), run the parallel neuron in ``x``'s dtype, recompose."""
    neuron_input, exponent = reduce_input(fit.function, x)
    value = mbe_forward(neuron_input, parameters=fit.parameters.to(dtype=x.dtype, device=x.device),
                        time_steps=fit.time_steps)
    return restore_output(fit.function, value, exponent, x)


# --------------------------------------------------------------------------- samples


def fit_samples(function: ScalarFunction | str, *, samples: Tensor | None = None,
                input_range: tuple[float, float] | None = None,
                sample_count: int = DEFAULT_SAMPLE_COUNT) -> Tensor:
    """The sorted float64 inputs ``(M,)`` the fit weights its error by, ``M ≤ sample_count``.

    ``samples`` (any shape; calibration values) are reduced to ``sample_count`` evenly
    spaced order statistics (all of them if fewer), which keeps the distribution and makes
    the result independent of the samples' order. ``input_range`` ``(lower, upper)`` and
    decomposed functions give the midpoints of ``sample_count`` equal cells.
    """
    function = as_scalar_function(function)
    check_count(sample_count, "sample_count")
    if is_decomposed(function):
        if samples is not None or input_range is not None:
            raise ValueError(f"fit_mbe: {function.value} is fitted on its fixed mantissa interval "
                             f"{fixed_interval(function)}; pass neither samples nor input_range")
        input_range = fixed_interval(function)
    elif (samples is None) == (input_range is None):
        raise ValueError(f"fit_mbe: pass exactly one of samples (calibration values) or input_range "
                         f"(lower, upper) for {function.value}")
    if samples is not None:
        if not isinstance(samples, Tensor) or samples.numel() == 0:
            raise ValueError("fit_mbe: samples must be a non-empty tensor")
        values = samples.detach().to("cpu", _DTYPE).flatten()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("fit_mbe: samples contain NaN or inf; drop them before fitting")
        values = values.sort().values
        if values.numel() > sample_count:
            index = torch.linspace(0, values.numel() - 1, sample_count, dtype=_DTYPE).round().long()
            values = values[index]
        return values
    lower, upper = (float(v) for v in input_range)
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"fit_mbe: input_range must be finite (lower, upper) with lower < upper, got {input_range}")
    cells = torch.arange(sample_count, dtype=_DTYPE)
    return lower + (cells + 0.5) * ((upper - lower) / sample_count)


# --------------------------------------------------------------------------- the neuron from knots


def binary_encoder(lower: Tensor, upper: Tensor, mirrored: Tensor, *, time_steps: int):
    """Input maps and schedules of binary-coding bases with windows ``[l_n, h_n]``:
    ``u = (x − l)/(h − l)`` (mirrored: ``(h − x)/(h − l)``), ``V = r = 2^−t``.
    Returns ``(input_scale, input_shift, threshold, reset)``, ``(N,)`` and ``(N, T)``."""
    width = upper - lower
    scale = torch.where(mirrored, -1.0 / width, 1.0 / width)
    shift = torch.where(mirrored, upper / width, -lower / width)
    steps = torch.arange(1, time_steps + 1, dtype=lower.dtype)
    # exp(−t·ln 2) rounded is not exactly 2^−t: the exact power keeps the digits exact.
    threshold = torch.exp2(-steps).expand(lower.numel(), time_steps).clone()
    return scale, shift, threshold, threshold.clone()


def _spikes(x: Tensor, scale: Tensor, shift: Tensor, threshold: Tensor, reset: Tensor) -> Tensor:
    """Spikes ``(M, N·T)`` of every basis and step for inputs ``(M,)`` (the same update as the neuron)."""
    membrane = scale[:, None] * x[None, :] + shift[:, None]  # (N, M)
    columns = []
    for index in range(threshold.shape[1]):
        spikes = (membrane >= threshold[:, index, None]).to(x.dtype)
        membrane = membrane - spikes * reset[:, index, None]
        columns.append(spikes)
    return torch.stack(columns, dim=1).reshape(-1, x.numel()).T


def _least_squares(design: Tensor, target: Tensor) -> tuple[Tensor, float]:
    """Ridge least squares with a constant column appended: ``(coefficients, mse)``."""
    design = torch.cat([design, torch.ones(design.shape[0], 1, dtype=design.dtype)], dim=1)
    gram = design.T @ design
    ridge = _RIDGE * (gram.diagonal().mean() + 1.0)
    coefficients = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), design.T @ target)
    residual = design @ coefficients - target
    return coefficients, float((residual * residual).mean())


def _spiking_error(x, y, lower, upper, mirrored, time_steps):
    scale, shift, threshold, reset = binary_encoder(lower, upper, mirrored, time_steps=time_steps)
    design = _spikes(x, scale, shift, threshold, reset)
    return _least_squares(design, y)[1], float(design.sum()) / x.numel()


# --------------------------------------------------------------------------- knots


def _ramp_error(x: Tensor, y: Tensor, lower: Tensor, width: Tensor) -> Tensor:
    ramps = ((x[:, None] - lower[None, :]) / width[None, :]).clamp(0, 1)
    design = torch.cat([ramps, torch.ones(x.numel(), 1, dtype=x.dtype)], dim=1)
    gram = design.T @ design
    gram = gram + _RIDGE * (gram.diagonal().mean() + 1.0) * torch.eye(gram.shape[0], dtype=x.dtype)
    residual = design @ torch.linalg.solve(gram, design.T @ y) - y
    return (residual * residual).mean()


def _relaxed_knots(x: Tensor, y: Tensor, bases: int, *, random_starts: int = 8) -> tuple[Tensor, Tensor]:
    """Stage 1: knots of the best linear spline of N ramps. Starts: three fixed layouts on
    the samples' quantiles and ``random_starts`` from a generator with a fixed seed (the loss
    has many local minima; a fixed seed keeps the search deterministic)."""
    span = float(x[-1] - x[0])
    minimum_width = span * 1e-4
    # Stage 1 is smooth: 1024 order statistics weight it like the full sample, 4x faster.
    if x.numel() > 1024:
        index = torch.linspace(0, x.numel() - 1, 1024, dtype=x.dtype).round().long()
        x, y = x[index], y[index]

    def quantile(q):
        return torch.quantile(x, torch.as_tensor(q, dtype=x.dtype).clamp(0, 1))

    fractions = torch.arange(bases, dtype=x.dtype)
    starts = [  # (lower, upper) per basis: overlapping tiles, nested ramps, equal tiles of the span
        (quantile(fractions / (bases + 1)), quantile((fractions + 2) / (bases + 1))),
        (quantile(fractions / bases * 0.9), x[-1].expand(bases).clone()),
        (x[0] + span * fractions / (bases + 1), x[0] + span * (fractions + 2) / (bases + 1)),
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(random_starts):
        lower = quantile(torch.rand(bases, generator=generator, dtype=x.dtype) * 0.95)
        starts.append((lower, lower + span * (0.02 + 0.6 * torch.rand(bases, generator=generator, dtype=x.dtype))))

    def descend(lower, width, iterations):
        lower = lower.clone().requires_grad_()
        raw_width = torch.log(torch.expm1(width)).requires_grad_()  # softplus keeps widths > 0
        optimiser = torch.optim.LBFGS([lower, raw_width], max_iter=iterations, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-12, tolerance_change=1e-16)

        def closure():
            optimiser.zero_grad()
            loss = _ramp_error(x, y, lower, torch.nn.functional.softplus(raw_width) + minimum_width)
            loss.backward()
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            width = torch.nn.functional.softplus(raw_width) + minimum_width
            error = float(_ramp_error(x, y, lower, width))
        return (error if math.isfinite(error) else math.inf), lower.detach(), width.detach()

    # A short descent from every start, then a long one from the two best.
    results = [descend(lower, (upper - lower).clamp_min(minimum_width * 10), 25) for lower, upper in starts]
    results = sorted(results, key=lambda result: result[0])[:2]
    error, lower, width = min((descend(lower, width, 200) for _, lower, width in results), key=lambda r: r[0])
    return lower, lower + width


def _pattern_search(x, y, lower, upper, mirrored, time_steps, *, rounds: int = 6):
    """Stage 2: coordinate pattern search of the knots on the spiking error (deterministic)."""
    error = _spiking_error(x, y, lower, upper, mirrored, time_steps)[0]
    step = float(x[-1] - x[0]) / 64
    for _ in range(rounds):
        improved = True
        while improved:
            improved = False
            for knots in (lower, upper):
                for n in range(lower.numel()):
                    for move in (step, -step):
                        old = float(knots[n])
                        knots[n] = old + move
                        if float(upper[n] - lower[n]) > step / 16:
                            candidate = _spiking_error(x, y, lower, upper, mirrored, time_steps)[0]
                            if candidate < error * (1 - 1e-9):
                                error, improved = candidate, True
                                break
                        knots[n] = old
        step /= 4
    return lower, upper


def _orientations(x, y, lower, upper, time_steps) -> Tensor:
    """Stage 3: mirror a basis where that lowers the spike count without raising the error."""
    mirrored = torch.zeros(lower.numel(), dtype=torch.bool)
    error, spikes = _spiking_error(x, y, lower, upper, mirrored, time_steps)
    for n in range(lower.numel()):
        mirrored[n] = True
        candidate, candidate_spikes = _spiking_error(x, y, lower, upper, mirrored, time_steps)
        if candidate <= error * (1 + 1e-6) + 1e-15 and candidate_spikes < spikes:
            error, spikes = candidate, candidate_spikes
        else:
            mirrored[n] = False
    return mirrored


# --------------------------------------------------------------------------- intensities


def _tied(design: Tensor, bases: int, time_steps: int, free_steps: int) -> Tensor:
    """The design ``(M, N·T)`` with each basis's steps ``t > free_steps`` folded into the
    column of step ``free_steps`` with weights ``2^−(t − free_steps)``: one coefficient for the
    tail, which then decays like the binary digits it scales. ``(M, N·free_steps)``."""
    design = design.reshape(design.shape[0], bases, time_steps)  # basis-major columns
    decay = torch.exp2(-torch.arange(time_steps - free_steps + 1, dtype=design.dtype))
    tail = (design[:, :, free_steps - 1:] * decay).sum(-1, keepdim=True)
    return torch.cat([design[:, :, :free_steps - 1], tail], dim=-1).reshape(design.shape[0], -1)


def _untied(coefficients: Tensor, bases: int, time_steps: int, free_steps: int) -> Tensor:
    """Intensities ``(N, T)`` from the coefficients of :func:`_tied`'s design."""
    kept = coefficients.reshape(bases, free_steps)
    decay = torch.exp2(-torch.arange(time_steps - free_steps + 1, dtype=kept.dtype))
    return torch.cat([kept[:, :-1], kept[:, -1:] * decay], dim=1)


def _intensities(function: ScalarFunction, x: Tensor, y: Tensor, encoder, *,
                 uniform: bool) -> tuple[Tensor, Tensor]:
    """Intensities ``(N, T)`` and output bias by least squares on the samples' spikes.

    A fit must hold on inputs it was not fitted on. With many steps, the finest binary
    digits split the input more finely than the samples do, so their intensities are not
    determined by the samples, and the free solve can fit the samples with large,
    cancelling intensities that are wrong elsewhere (exp's mantissa at T = 32: MSE 4e-7 on
    its samples, 5.5 on a fresh grid). The check depends on what the samples stand for:

    * ``uniform`` (a grid over an interval: decomposed functions, ``input_range``): any
      point of the interval may come, so the fit on all samples is measured at the
      midpoints between consecutive samples;
    * calibration samples: they stand for a distribution, which may have gaps and repeated
      values where midpoints mean nothing; a fit on the even-indexed order statistics is
      measured on the odd ones (the same distribution, one sample apart).

    Where that error exceeds ten times the fitted error, the steps after ``k`` share one
    coefficient that decays like binary digits (:func:`_tied`), ``k`` chosen by the same
    check, and the chosen form is solved on all samples. Otherwise the free solve stands
    unchanged (every fit of MiniLM's and the ViT's sites at T ≤ 16 measured).
    """
    bases, time_steps = encoder[2].shape
    design = _spikes(x, *encoder)
    coefficients, _ = _least_squares(design, y)
    free = (coefficients[:-1].reshape(bases, time_steps), coefficients[-1].clone())
    if time_steps < 2 or x.numel() < 4:
        return free
    if uniform:
        midpoints = (x[1:] + x[:-1]) / 2
        fitted, fitted_target = design, y
        check, check_target = _spikes(midpoints, *encoder), target_values(function, midpoints)
    else:
        fitted, fitted_target, check, check_target = design[0::2], y[0::2], design[1::2], y[1::2]

    def check_error(transform):
        solution, fitted_error = _least_squares(transform(fitted), fitted_target)
        residual = transform(check) @ solution[:-1] + solution[-1] - check_target
        return float((residual * residual).mean()), fitted_error

    best_error, fitted_error = check_error(lambda d: d)
    if best_error <= 10 * fitted_error + 1e-12:
        return free
    best_steps = time_steps
    for free_steps in range(1, time_steps):
        error, _ = check_error(lambda d, k=free_steps: _tied(d, bases, time_steps, k))
        if error < best_error:
            best_error, best_steps = error, free_steps
    if best_steps == time_steps:
        return free
    solution, _ = _least_squares(_tied(design, bases, time_steps, best_steps), y)
    return _untied(solution[:-1], bases, time_steps, best_steps), solution[-1].clone()


# --------------------------------------------------------------------------- the fit


def _digest(function: ScalarFunction, x: Tensor, bases: int, time_steps: int) -> str:
    hasher = hashlib.sha256(f"mbe-v{FIT_VERSION}:{function.value}:N{bases}:T{time_steps}:".encode())
    hasher.update(x.contiguous().numpy().tobytes())
    return hasher.hexdigest()


def _fit(function: ScalarFunction, x: Tensor, bases: int, time_steps: int, digest: str,
         bounds: tuple[float, float], *, uniform: bool) -> MBEFit:
    y = target_values(function, x)
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"fit_mbe: {function.value} is not finite on the samples")
    if float(x[-1] - x[0]) <= 0:
        raise ValueError("fit_mbe: the samples are all equal; nothing to fit (give a range or spread samples)")
    lower, upper = _relaxed_knots(x, y, bases)
    mirrored = torch.zeros(bases, dtype=torch.bool)
    lower, upper = _pattern_search(x, y, lower, upper, mirrored, time_steps)
    mirrored = _orientations(x, y, lower, upper, time_steps)
    scale, shift, threshold, reset = binary_encoder(lower, upper, mirrored, time_steps=time_steps)
    intensity, bias = _intensities(function, x, y, (scale, shift, threshold, reset), uniform=uniform)
    parameters = MBEParameters(input_scale=scale, input_shift=shift, threshold=threshold, reset=reset,
                               intensity=intensity,
                               weight=torch.ones(bases, dtype=_DTYPE), output_bias=bias)
    # Errors of the neuron itself (the parallel form), not of the design matrix.
    error = mbe_forward(x, parameters=parameters, time_steps=time_steps) - y
    grid = torch.linspace(*bounds, _CHECK_POINTS, dtype=_DTYPE)
    grid_error = mbe_forward(grid, parameters=parameters, time_steps=time_steps) - target_values(function, grid)
    return MBEFit(function=function, parameters=parameters, lower=bounds[0], upper=bounds[1], digest=digest,
                  mse=float((error * error).mean()), max_error=float(error.abs().max()),
                  grid_max_error=float(grid_error.abs().max()))


def fit_mbe(function: ScalarFunction | str, *, bases: int, time_steps: int, samples: Tensor | None = None,
            input_range: tuple[float, float] | None = None, sample_count: int = DEFAULT_SAMPLE_COUNT,
            cache: bool = True, cache_dir=None) -> MBEFit:
    """Fit an MBE neuron with ``bases`` (N) bases over ``time_steps`` (T) steps to ``function``.

    The error is weighted by ``samples`` (calibration values of the function's input, any
    shape) or uniform over ``input_range = (lower, upper)``; exactly one is needed, except for
    exp, reciprocal and rsqrt, which take neither (fixed mantissa interval, any input). The
    result is cached (:mod:`parasnn.neurons.mbe_cache`) under the function, N, T and a
    digest of the reduced samples; ``cache=False`` always fits and writes nothing.
    Deterministic: the same arguments give bit-equal parameters (on one machine).
    """
    from .mbe_cache import load_fit, store_fit  # the cache imports MBEFit from here

    function = as_scalar_function(function)
    check_count(bases, "bases")
    check_count(time_steps, "time_steps")
    x = fit_samples(function, samples=samples, input_range=input_range, sample_count=sample_count)
    digest = _digest(function, x, bases, time_steps)
    if cache:
        cached = load_fit(function, bases=bases, time_steps=time_steps, digest=digest, cache_dir=cache_dir)
        if cached is not None:
            return cached
    if is_decomposed(function):
        bounds = fixed_interval(function)
    elif input_range is not None:
        bounds = (float(input_range[0]), float(input_range[1]))
    else:
        bounds = (float(x[0]), float(x[-1]))
    fit = _fit(function, x, bases, time_steps, digest, bounds, uniform=samples is None)
    if cache:
        store_fit(fit, cache_dir=cache_dir)
    return fit
