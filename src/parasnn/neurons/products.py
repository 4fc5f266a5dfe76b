"""The product of two spike-coded values (attention's ``Q·Kᵀ`` and ``attention·V``, LayerNorm's
and Softmax's multiplications): "Training-Free ANN-to-SNN Conversion for High-Performance
Spiking Transformer" (arXiv 2508.07710) writes it as a sum over pairs of spikes of their
intensity products; docs/maths.md §7.

Convention (as for every layer here): a layer's parallel output is the *time average* of
its serial outputs. The operands are the per-step outputs ``x_t`` and ``y_t`` of two layers,
with time averages ``a = (1/T)·Σ_t x_t`` and ``b = (1/T)·Σ_t y_t``.

* **parallel** (:func:`decoded_product`): ``a ∘ b`` — the product of the decoded values, one
  operation (``∘`` is ``*`` or ``@``, :class:`ProductKind`).
* **serial** (:func:`product_step`): causal, with the running sums ``A_{t−1} = Σ_{s<t} x_s`` and
  ``B_{t−1}`` as explicit state. Step t emits the pair products that become available at t::

      B_t   = B_{t−1} + y_t
      out_t = (x_t ∘ B_t + A_{t−1} ∘ y_t) / T
      A_t   = A_{t−1} + x_t

  Since ``A_t∘B_t − A_{t−1}∘B_{t−1} = x_t∘B_t + A_{t−1}∘y_t`` (bilinearity), ``Σ_t out_t``
  telescopes to ``A_T∘B_T / T`` and ``mean_t out_t = (A_T/T)∘(B_T/T) = a∘b``: the serial
  total is the parallel product for *any* operand trains, not only constant ones. In
  floating point the two sides round differently; they are bit-equal when every
  intermediate is exact (values on a dyadic grid, T a power of two), otherwise equal to
  rounding (tested both ways).
"""
from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ProductKind", "ProductState", "decoded_product", "product_initial_state", "product_step",
           "serial_product"]


class ProductKind(str, Enum):
    """Which bilinear product: elementwise ``*`` (broadcasting) or ``torch.matmul`` (``@``,
    batched like ``bmm`` for 3-D operands)."""

    ELEMENTWISE = "elementwise"
    MATMUL = "matmul"


def _operation(kind: ProductKind):
    kind = ProductKind(kind)
    return torch.mul if kind is ProductKind.ELEMENTWISE else torch.matmul


class ProductState(NamedTuple):
    """Running sums of the operands' per-step outputs before the current step: ``A_{t−1}``, ``B_{t−1}``."""

    left_sum: Tensor
    right_sum: Tensor


def decoded_product(left: Tensor, right: Tensor, *, kind: ProductKind = ProductKind.ELEMENTWISE) -> Tensor:
    """Parallel form: ``a ∘ b`` of the time-averaged operands ``left = a`` and ``right = b``."""
    return _operation(kind)(left, right)


def product_initial_state(left: Tensor, right: Tensor) -> ProductState:
    """Zero running sums shaped like the operands' per-step outputs."""
    return ProductState(torch.zeros_like(left), torch.zeros_like(right))


def product_step(state: ProductState, left: Tensor, right: Tensor, *, time_steps: int,
                 kind: ProductKind = ProductKind.ELEMENTWISE) -> tuple[ProductState, Tensor]:
    """One serial step: operands' outputs at step t (``x_t = left``, ``y_t = right``) →
    ``(new state, out_t = (x_t∘B_t + A_{t−1}∘y_t)/T)``."""
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
    operation = _operation(kind)
    right_sum = state.right_sum + right
    output = (operation(left, right_sum) + operation(state.left_sum, right)) / time_steps
    return ProductState(state.left_sum + left, right_sum), output


def serial_product(left_train: Tensor, right_train: Tensor, *,
                   kind: ProductKind = ProductKind.ELEMENTWISE) -> Tensor:
    """Run :func:`product_step` over trains ``(T, ...)``; returns the outputs ``(T, ...)``."""
    if left_train.shape[0] != right_train.shape[0]:
        raise ValueError(f"serial_product: operand trains must have the same number of steps (first axis), "
                         f"got {left_train.shape[0]} and {right_train.shape[0]}")
    time_steps = left_train.shape[0]
    state = product_initial_state(left_train[0], right_train[0])
    outputs = []
    for left, right in zip(left_train, right_train):
        state, output = product_step(state, left, right, time_steps=time_steps, kind=kind)
        outputs.append(output)
    return torch.stack(outputs)
