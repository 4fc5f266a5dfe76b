"""Products of spike-coded values: the serial total is the parallel product of the decoded values."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from parasnn.neurons.products import (ProductKind, ProductState, decoded_product, product_initial_state,
                                      product_step, serial_product)

SHAPES = {  # kind: (left shape, right shape) of one step
    ProductKind.ELEMENTWISE: ((3, 4), (1, 4)),  # broadcasting
    ProductKind.MATMUL: ((2, 3, 5), (2, 5, 4)),  # bmm
}


def dyadic_train(generator, time_steps, shape):
    """Per-step outputs on the grid k/4, |k| ≤ 16: every product and sum below is exact."""
    return torch.randint(-16, 17, (time_steps, *shape), generator=generator).float() / 4


@given(seed=st.integers(0, 2**31 - 1), log_steps=st.integers(0, 4), kind=st.sampled_from(list(ProductKind)))
def test_serial_total_equals_parallel_product_exactly_on_a_dyadic_grid(seed, log_steps, kind):
    generator = torch.Generator().manual_seed(seed)
    time_steps = 2**log_steps  # dividing by a power of two is exact
    left_shape, right_shape = SHAPES[kind]
    left, right = dyadic_train(generator, time_steps, left_shape), dyadic_train(generator, time_steps, right_shape)
    outputs = serial_product(left, right, kind=kind)
    parallel = decoded_product(left.mean(0), right.mean(0), kind=kind)
    assert torch.equal(outputs.mean(0), parallel)


@given(seed=st.integers(0, 2**31 - 1), time_steps=st.integers(1, 12), kind=st.sampled_from(list(ProductKind)))
def test_serial_total_equals_parallel_product_to_rounding(seed, time_steps, kind):
    generator = torch.Generator().manual_seed(seed)
    left_shape, right_shape = SHAPES[kind]
    left = torch.randn(time_steps, *left_shape, generator=generator)
    right = torch.randn(time_steps, *right_shape, generator=generator)
    outputs = serial_product(left, right, kind=kind)
    parallel = decoded_product(left.mean(0), right.mean(0), kind=kind)
    # Float rounding: the serial side sums T pair terms, the parallel side multiplies means.
    torch.testing.assert_close(outputs.mean(0), parallel, rtol=1e-5, atol=1e-5)
    exact = decoded_product(left.double().mean(0), right.double().mean(0), kind=kind)
    torch.testing.assert_close(outputs.double().mean(0), exact, rtol=1e-5, atol=1e-5)


def test_step_is_causal_and_state_is_the_running_sums():
    left, right = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[3.0], [5.0], [7.0]])
    state = product_initial_state(left[0], right[0])
    totals = []
    for step in range(3):
        state, output = product_step(state, left[step], right[step], time_steps=3)
        totals.append(output * 3)
        assert isinstance(state, ProductState)
        assert torch.equal(state.left_sum, left[: step + 1].sum(0))
        assert torch.equal(state.right_sum, right[: step + 1].sum(0))
        # After step t the emitted total is the product of the partial sums (nothing from the future).
        assert torch.equal(torch.stack(totals).sum(0), left[: step + 1].sum(0) * right[: step + 1].sum(0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="time_steps must be an integer >= 1"):
        product_step(product_initial_state(torch.zeros(2), torch.zeros(2)), torch.zeros(2), torch.zeros(2),
                     time_steps=0)
    with pytest.raises(ValueError, match="same number of steps"):
        serial_product(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="is not a valid ProductKind"):
        decoded_product(torch.zeros(2), torch.zeros(2), kind="outer")
