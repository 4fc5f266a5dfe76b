"""The fused MBE kernel gives exactly the reference's bits (outputs and spike counts), and
takes the reference path where it does not apply. The first run on a machine compiles the
C++ operator (about a minute); later runs load it from PyTorch's extension cache."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parasnn.neurons.function_neuron import function_value
from parasnn.neurons.fused_mbe import fused_mbe_forward, fused_mbe_spike_count, mbe_cpu_kernels
from parasnn.neurons.mbe import MBEParameters, mbe_forward, mbe_spike_count
from parasnn.neurons.mbe_fit import fit_mbe
from parasnn.neurons.mbe_functions import ScalarFunction, reduce_input, restore_output


@pytest.fixture(scope="module", autouse=True)
def kernels():
    built = mbe_cpu_kernels()
    assert built is not None, "the fused MBE kernel must build on the test machine (gcc + ninja)"
    return built


def _random_parameters(generator, bases, time_steps, dtype):
    def draw(*shape, positive=False):
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
        return (values.abs() if positive else values).to(dtype)
    return MBEParameters(draw(bases), draw(bases), draw(bases, time_steps, positive=True),
                         draw(bases, time_steps, positive=True), draw(bases, time_steps), draw(bases), draw())


def _inputs_with_edges(parameters, count, generator, dtype):
    """Random inputs plus inputs that put a membrane exactly on a threshold at step 1, and
    zeros, ±inf and NaN."""
    x = torch.randn(count, generator=generator, dtype=torch.float64) * 3
    on_threshold = (parameters.threshold[:, 0].double() - parameters.input_shift.double()) / parameters.input_scale.double()
    edges = torch.cat([on_threshold, torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e30])])
    return torch.cat([edges, x]).to(dtype)


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num()) \
        and torch.equal(a.isnan(), b.isnan())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bases=st.integers(1, 6), time_steps=st.integers(1, 17),
       count=st.integers(0, 700), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fused_forward_and_count_equal_the_reference_bit_for_bit(seed, bases, time_steps, count, dtype):
    generator = torch.Generator().manual_seed(seed)
    parameters = _random_parameters(generator, bases, time_steps, dtype)
    x = _inputs_with_edges(parameters, count, generator, dtype)
    assert _same_bits(fused_mbe_forward(x, parameters=parameters, time_steps=time_steps),
                      mbe_forward(x, parameters=parameters, time_steps=time_steps))
    assert _same_bits(fused_mbe_spike_count(x, parameters=parameters, time_steps=time_steps),
                      mbe_spike_count(x, parameters=parameters, time_steps=time_steps))


@pytest.mark.parametrize("function", [ScalarFunction.GELU, ScalarFunction.EXP, ScalarFunction.RSQRT])
def test_fitted_functions_give_the_reference_bits_on_shaped_inputs(function):
    """A real fit, an input of shape (B, heads, L, L) and a non-contiguous view."""
    fit = fit_mbe(function, bases=4, time_steps=8, input_range=(-6.0, 6.0), cache=False) if function is ScalarFunction.GELU \
        else fit_mbe(function, bases=4, time_steps=8, cache=False)
    parameters = fit.parameters.to(torch.float32)
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(1)) * 4
    if function is ScalarFunction.RSQRT:
        x = x.abs()
    for current in (x, x.transpose(-1, -2)):  # the second is not contiguous: the reference path
        neuron_input, exponent = reduce_input(function, current)
        reference = restore_output(function, mbe_forward(neuron_input, parameters=parameters, time_steps=8),
                                   exponent, current)
        assert _same_bits(function_value(current, function=function, parameters=parameters, time_steps=8), reference)


def test_reference_path_where_a_graph_is_recorded_or_dtypes_differ():
    generator = torch.Generator().manual_seed(2)
    parameters = _random_parameters(generator, 3, 4, torch.float32)
    x = torch.randn(50, generator=generator, requires_grad=True)
    assert _same_bits(fused_mbe_forward(x, parameters=parameters, time_steps=4),
                      mbe_forward(x, parameters=parameters, time_steps=4))
    half = x.detach().to(torch.float64)  # float64 input, float32 parameters: promoted, as the reference
    assert _same_bits(fused_mbe_forward(half, parameters=parameters, time_steps=4),
                      mbe_forward(half, parameters=parameters, time_steps=4))


def test_wrong_time_steps_is_refused_like_the_reference():
    parameters = _random_parameters(torch.Generator().manual_seed(3), 2, 4, torch.float32)
    with pytest.raises(ValueError, match="fitted for time_steps=4"):
        fused_mbe_forward(torch.zeros(3), parameters=parameters, time_steps=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_equals_the_reference():
    generator = torch.Generator().manual_seed(4)
    parameters = _random_parameters(generator, 4, 8, torch.float32)
    x = _inputs_with_edges(parameters, 5000, generator, torch.float32)
    on_device = parameters.to("cuda")
    assert _same_bits(fused_mbe_forward(x.cuda(), parameters=on_device, time_steps=8).cpu(),
                      mbe_forward(x, parameters=parameters, time_steps=8))
    assert _same_bits(fused_mbe_spike_count(x.cuda(), parameters=on_device, time_steps=8).cpu(),
                      mbe_spike_count(x, parameters=parameters, time_steps=8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_with_its_split_inside_the_kernel_equals_the_composed_reference(dtype):
    """Inputs whose exponents E = floor(x·log2 e) cover every value the split can produce
    (clamped to ±1100: 2^E overflows to inf and underflows to 0 on the way), results in the
    subnormal range, and ±0, ±inf, NaN."""
    fit = fit_mbe(ScalarFunction.EXP, bases=4, time_steps=8, cache=False)
    parameters = fit.parameters.to(dtype)
    x = torch.cat([torch.linspace(-800, 800, 200_001, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -103.5, -87.4, 88.7, 89.0])])
    x = x.to(dtype)
    neuron_input, exponent = reduce_input(ScalarFunction.EXP, x)
    reference = restore_output(ScalarFunction.EXP, mbe_forward(neuron_input, parameters=parameters, time_steps=8),
                               exponent, x)
    assert _same_bits(function_value(x, function=ScalarFunction.EXP, parameters=parameters, time_steps=8), reference)
    from parasnn.neurons.function_neuron import function_spike_count
    assert _same_bits(function_spike_count(x, function=ScalarFunction.EXP, parameters=parameters, time_steps=8),
                      mbe_spike_count(neuron_input, parameters=parameters, time_steps=8))
