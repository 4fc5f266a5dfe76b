"""Gradients for the two non-differentiable pieces of spiking maths: ``floor`` and the
Heaviside step.

Both are autograd functions whose *forward* is the exact operation (``torch.floor``,
``x >= 0``), so a model's values never depend on whether gradients are being recorded.
Only the backward pass is approximated:

* :func:`floor_ste` — straight-through estimator, ``d floor(x)/dx := 1``. Used by the QCFS
  activation during ANN training (docs/maths.md §1).
* :func:`heaviside` — the step ``H(x) = [x >= 0]`` with the *triangle* surrogate
  ``H'(x) := triangle(x)``, unit slope inside a band ``|x| < width`` and zero outside
  ([STDC], App. C). Used to train the temporal bias of parallel neurons (docs/maths.md §4c).

The triangle is normalised to unit area, so it is the exact derivative of
:func:`smoothed_heaviside`, a piecewise-quadratic ramp from 0 (at ``-width``) to 1 (at
``+width``). Tests compare the surrogate against finite differences of that function.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["floor_ste", "heaviside", "triangle", "smoothed_heaviside"]


class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def floor_ste(x: Tensor) -> Tensor:
    """``floor(x)`` with a straight-through (identity) gradient."""
    return _FloorSTE.apply(x)


def triangle(x: Tensor, *, width: float = 1.0) -> Tensor:
    """Triangle surrogate derivative ``max(0, width - |x|) / width**2``.

    Peak ``1/width`` at 0, slopes ``±1/width**2`` (unit slope for ``width = 1``), zero for
    ``|x| >= width``, area 1.
    """
    if width <= 0:
        raise ValueError(f"triangle: width must be > 0, got {width}")
    return torch.clamp(width - x.abs(), min=0.0) / (width * width)


def smoothed_heaviside(x: Tensor, *, width: float = 1.0) -> Tensor:
    """The function whose derivative is :func:`triangle`: 0 below ``-width``, 1 above
    ``width``, ``(x + w)^2 / 2w^2`` on ``[-w, 0]`` and ``1 - (w - x)^2 / 2w^2`` on ``[0, w]``."""
    w = width
    left = (x + w).clamp(min=0.0) ** 2 / (2 * w * w)
    right = 1.0 - (w - x).clamp(min=0.0) ** 2 / (2 * w * w)
    return torch.where(x <= 0, left.clamp(max=0.5), right.clamp(min=0.5))


class _HeavisideTriangle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, width: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.width = width
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * triangle(x, width=ctx.width), None


def heaviside(x: Tensor, *, width: float = 1.0) -> Tensor:
    """``[x >= 0]`` as a float tensor, with the triangle surrogate gradient."""
    return _HeavisideTriangle.apply(x, width)
