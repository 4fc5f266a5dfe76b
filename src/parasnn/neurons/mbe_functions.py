"""The scalar functions an MBE neuron is fitted to, and the IEEE-754 decompositions that let
exp, reciprocal and inverse square root work on any input with a fit on one fixed interval
("Training-Free ANN-to-SNN Conversion for High-Performance Spiking Transformer",
arXiv 2508.07710; docs/maths.md §7).

Decompositions (``E`` an integer, applied exactly with ``torch.ldexp``; only ``g`` is fitted)
---------------------------------------------------------------------------------------------
* **exp**: ``exp(x) = 2^z`` with ``z = x·log2(e)``; ``E = floor(z)``, ``m = z − E ∈ [0, 1)``;
  ``exp(x) = g(m)·2^E`` with ``g(m) = 2^m`` fitted on ``[0, 1)``. Rounding of ``z`` costs a
  relative error of about ``|z|·ε`` (ε the dtype's epsilon); ``2^E`` over- or underflows to
  ``inf``/0 exactly where exp does.
* **reciprocal**: ``torch.frexp``: ``|x| = M·2^E`` with ``M ∈ [0.5, 1)``; ``1/x = sign(x)·g(M)·2^−E``
  with ``g(m) = 1/m`` fitted on ``[0.5, 1)``. ``1/0 = ±inf``.
* **inverse square root**: ``x = M·2^E`` as above. ``2^(−E/2)`` is a power of two only for
  even ``E``, so an odd ``E`` moves one factor 2 into the mantissa: ``m = 2M ∈ [1, 2)``,
  ``E ← E − 1``. Then ``1/√x = g(m)·2^(−E/2)`` with ``g(m) = m^(−1/2)`` fitted on ``[0.5, 2)``.
  ``1/√0 = inf``; negative inputs give NaN like ``torch.rsqrt``.

Everything else is fitted directly on the input distribution (no decomposition).
"""
from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor
from torch.nn import functional

__all__ = ["ScalarFunction", "as_scalar_function", "target_values", "reduce_input", "restore_output", "fixed_interval",
           "is_decomposed", "exact_values"]


class ScalarFunction(str, Enum):
    """The functions an MBE neuron can be fitted to."""

    GELU = "gelu"  # exact: x·Φ(x) with the erf
    GELU_TANH = "gelu_tanh"  # the tanh approximation (GPT-2, BERT variants)
    SILU = "silu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    HARDSWISH = "hardswish"
    EXP = "exp"
    RECIPROCAL = "reciprocal"
    RSQRT = "rsqrt"  # inverse square root


_DECOMPOSED = {
    # function: (fixed interval of the mantissa the neuron sees, fitted mantissa function)
    ScalarFunction.EXP: ((0.0, 1.0), lambda m: torch.exp2(m)),
    ScalarFunction.RECIPROCAL: ((0.5, 1.0), lambda m: 1.0 / m),
    ScalarFunction.RSQRT: ((0.5, 2.0), lambda m: torch.rsqrt(m)),
}


def as_scalar_function(function) -> ScalarFunction:
    try:
        return ScalarFunction(function)
    except ValueError:
        names = ", ".join(f.value for f in ScalarFunction)
        raise ValueError(f"unknown scalar function {function!r}; choose one of {names}") from None


def is_decomposed(function: ScalarFunction | str) -> bool:
    """True where the neuron sees a mantissa on a fixed interval, not the input itself."""
    return as_scalar_function(function) in _DECOMPOSED


def fixed_interval(function: ScalarFunction | str) -> tuple[float, float]:
    """The mantissa interval ``[lower, upper)`` of a decomposed function."""
    function = as_scalar_function(function)
    if function not in _DECOMPOSED:
        raise ValueError(f"{function.value} has no fixed interval: fit it on samples or an input range")
    return _DECOMPOSED[function][0]


def exact_values(function: ScalarFunction | str, x: Tensor) -> Tensor:
    """The function itself on its natural input (reference for errors)."""
    function = as_scalar_function(function)
    direct = {
        ScalarFunction.GELU: lambda v: functional.gelu(v),
        ScalarFunction.GELU_TANH: lambda v: functional.gelu(v, approximate="tanh"),
        ScalarFunction.SILU: functional.silu,
        ScalarFunction.SIGMOID: torch.sigmoid,
        ScalarFunction.TANH: torch.tanh,
        ScalarFunction.HARDSWISH: functional.hardswish,
        ScalarFunction.EXP: torch.exp,
        ScalarFunction.RECIPROCAL: torch.reciprocal,
        ScalarFunction.RSQRT: torch.rsqrt,
    }
    return direct[function](x)


def target_values(function: ScalarFunction | str, neuron_input: Tensor) -> Tensor:
    """What the neuron must output for the value it sees: the mantissa function ``g`` for a
    decomposed function, the function itself otherwise."""
    function = as_scalar_function(function)
    if function in _DECOMPOSED:
        return _DECOMPOSED[function][1](neuron_input)
    return exact_values(function, neuron_input)


def reduce_input(function: ScalarFunction | str, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(neuron input, exponent)``: the mantissa and integer exponent of a decomposed
    function (exponent an int32 tensor shaped like ``x``), or ``(x, None)``."""
    function = as_scalar_function(function)
    if function is ScalarFunction.EXP:
        z = x * math.log2(math.e)
        exponent = torch.floor(z)
        # Clamping keeps the int conversion defined; 2^±1000 already over/underflows float64.
        return z - exponent, exponent.clamp(-1100, 1100).to(torch.int32)
    if function is ScalarFunction.RECIPROCAL:
        mantissa, exponent = torch.frexp(x.abs())
        return mantissa, exponent
    if function is ScalarFunction.RSQRT:
        mantissa, exponent = torch.frexp(x)
        odd = (exponent % 2).bool()
        return torch.where(odd, mantissa * 2, mantissa), exponent - odd.to(exponent.dtype)
    return x, None


def restore_output(function: ScalarFunction | str, value: Tensor, exponent: Tensor | None, x: Tensor) -> Tensor:
    """The function's value from the neuron's output ``value = g(m)`` and the exponent."""
    function = as_scalar_function(function)
    if function is ScalarFunction.EXP:
        return torch.ldexp(value, exponent)
    if function is ScalarFunction.RECIPROCAL:
        result = torch.ldexp(value, -exponent) * torch.sign(x)
        return torch.where(x == 0, torch.copysign(torch.full_like(value, math.inf), x), result)
    if function is ScalarFunction.RSQRT:
        result = torch.ldexp(value, torch.div(-exponent, 2, rounding_mode="floor"))
        result = torch.where(x == 0, torch.full_like(value, math.inf), result)
        return torch.where(x < 0, torch.full_like(value, math.nan), result)
    return value
