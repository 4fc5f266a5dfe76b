"""Max-pooling in a spiking network: applied to rates (docs/maths.md §3).

The rule registered in :mod:`parasnn.conversion.builtin_rules` replaces every max-pool
(module or function) with a :class:`RateMaxPool`.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..neurons.base import SerialOp
from .graph import ConversionError, describe

__all__ = ["Amax", "RateMaxPool", "MAX_POOL_MODULES", "MAX_POOL_FUNCTIONS", "max_pool_module"]

MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_FUNCTION_MODULES = {
    F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d, F.max_pool3d: nn.MaxPool3d,
    F.adaptive_max_pool1d: nn.AdaptiveMaxPool1d, F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
    F.adaptive_max_pool3d: nn.AdaptiveMaxPool3d,
}
MAX_POOL_FUNCTIONS = frozenset(_FUNCTION_MODULES)


class RateMaxPool(SerialOp):
    """Max-pooling applied to rates.

    Parallel form: ``pool(r)`` on time-averaged inputs — exactly the ANN's max-pool.
    Serial form: the output at step t is ``pool(Σ_{τ≤t} x_τ) − pool(Σ_{τ<t} x_τ)``. The sum of
    the outputs telescopes to ``pool(Σ_t x_t)``, so the time average is again the max-pool
    of the rates; and when the inputs are spikes of one amplitude the outputs are spikes
    too (the running maximum of counts grows by 0 or 1 per step).
    """

    takes_time_steps = False

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x)

    def initial_state(self, current: Tensor, *, time_steps: int):
        total = torch.zeros_like(current)
        return total, self.pool(total)

    def step(self, state, current: Tensor, *, time_steps: int):
        total, pooled = state
        total = total + current
        new_pooled = self.pool(total)
        return (total, new_pooled), new_pooled - pooled


class Amax(nn.Module):
    """``torch.amax(x, dim, keepdim)`` as a module, so :class:`RateMaxPool` can apply it to rates."""

    def __init__(self, dim, keepdim: bool = False):
        super().__init__()
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x: Tensor) -> Tensor:
        return torch.amax(x, dim=self.dim, keepdim=self.keepdim)


def max_pool_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    """The pooling module a max-pool node computes (a copy of the module, or one built from
    the function's constant arguments)."""
    if node.op == "call_module":
        return copy.deepcopy(gm.get_submodule(node.target))
    arguments = list(node.args[1:]) + list(node.kwargs.values())
    if any(isinstance(a, fx.Node) for a in arguments):
        raise ConversionError(f"{describe(gm, node)}: max-pool parameters computed from tensors are not supported")
    kwargs = dict(node.kwargs)
    kwargs.pop("return_indices", None)
    return _FUNCTION_MODULES[node.target](*node.args[1:], **kwargs)
