"""The layer that multiplies two spike-coded activations (``a * b``, ``a @ b``, ``bmm``):
the maths is in :mod:`parasnn.neurons.products`."""
from __future__ import annotations

from torch import Tensor

from .base import SerialOp
from .products import ProductKind, ProductState, decoded_product, product_initial_state, product_step

__all__ = ["SpikingProduct"]


class SpikingProduct(SerialOp):
    """``left ∘ right`` of two activations. Parallel: the product of the time averages.
    Serial: the pair products that become available at each step, so the time average at T
    equals the parallel product. It emits no spikes of its own (its output feeds synapses
    as intensities, the paper's ``D ⊙ S``); its multiplications are counted as elementwise
    operations in the energy report."""

    takes_time_steps = False

    def __init__(self, kind: ProductKind | str = ProductKind.ELEMENTWISE):
        super().__init__()
        self.kind = ProductKind(kind)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        return decoded_product(left, right, kind=self.kind)

    def initial_state(self, left: Tensor, right: Tensor, *, time_steps: int) -> ProductState:
        return product_initial_state(left, right)

    def step(self, state: ProductState, left: Tensor, right: Tensor, *, time_steps: int):
        return product_step(state, left, right, time_steps=time_steps, kind=self.kind)

    def extra_repr(self) -> str:
        return self.kind.value
