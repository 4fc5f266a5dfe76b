"""MBE neuron: parallel = serial bit for bit, the fit's recorded errors hold, determinism,
the cache, the IEEE-754 decompositions, and clear errors on bad input."""
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from parasnn.neurons import mbe_fit as fitting
from parasnn.neurons.mbe import (MBENeuron, MBEParameters, exponential_decay, mbe_forward, mbe_initial_state,
                                 mbe_readout, mbe_spike_count, mbe_spike_train, mbe_step, mbe_step_value)
from parasnn.neurons.mbe_cache import cache_path
from parasnn.neurons.mbe_fit import fit_mbe, fit_samples
from parasnn.neurons.mbe_functions import ScalarFunction, exact_values, fixed_interval, target_values

FAST = dict(sample_count=256, cache=False)


def random_parameters(generator, bases, time_steps, dtype):
    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    amplitude, time_constant = draw(bases).abs() + 0.1, draw(bases).abs() + 0.5
    return MBEParameters(input_scale=draw(bases), input_shift=draw(bases),
                         threshold=exponential_decay(amplitude, time_constant, time_steps=time_steps),
                         reset=draw(bases, time_steps).abs(), intensity=draw(bases, time_steps), weight=draw(bases),
                         output_bias=draw(()))


@given(seed=st.integers(0, 2**31 - 1), bases=st.integers(1, 4), time_steps=st.integers(1, 6),
       shape=st.sampled_from([(7,), (2, 3), (2, 3, 2)]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_parallel_equals_serial_bit_for_bit(seed, bases, time_steps, shape, dtype):
    generator = torch.Generator().manual_seed(seed)
    parameters = random_parameters(generator, bases, time_steps, dtype)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3).to(dtype)
    state = mbe_initial_state(x, parameters=parameters)
    spikes, values = [], []
    for step in range(1, time_steps + 1):
        state, step_spikes = mbe_step(state, parameters=parameters, step=step)
        spikes.append(step_spikes)
        values.append(mbe_step_value(step_spikes, parameters=parameters, step=step))
    parallel = mbe_forward(x, parameters=parameters, time_steps=time_steps)
    assert parallel.shape == x.shape
    assert torch.equal(mbe_readout(state, parameters=parameters), parallel)
    train = mbe_spike_train(x, parameters=parameters, time_steps=time_steps)
    assert train.shape == (time_steps, bases, *shape)
    assert torch.equal(train, torch.stack(spikes))
    assert torch.equal(mbe_spike_count(x, parameters=parameters, time_steps=time_steps), train.sum((0, 1)))
    # The step values add up to the read-out (different summation order: equal to rounding).
    torch.testing.assert_close(torch.stack(values).sum(0) + parameters.output_bias, parallel)

    neuron = MBENeuron(parameters)
    assert torch.equal(neuron(x, time_steps=time_steps), parallel)
    neuron_state = neuron.initial_state(x, time_steps=time_steps)
    outputs = []
    for _ in range(time_steps):
        neuron_state, output = neuron.step(neuron_state, x, time_steps=time_steps)
        outputs.append(output)
    assert torch.equal(neuron.readout(neuron_state), parallel)
    torch.testing.assert_close(torch.stack(outputs).mean(0), parallel, rtol=1e-4 if dtype == torch.float32 else 1e-9,
                               atol=1e-4 if dtype == torch.float32 else 1e-9)


def test_binary_basis_spikes_are_the_binary_digits():
    """With V = r = d = 2^−t a basis outputs its membrane rounded down to T bits."""
    time_steps, codes = 5, torch.arange(32, dtype=torch.float64)
    scale, shift, threshold, reset = fitting.binary_encoder(torch.zeros(1, dtype=torch.float64),
                                                            torch.ones(1, dtype=torch.float64),
                                                            torch.zeros(1, dtype=torch.bool), time_steps=time_steps)
    parameters = MBEParameters(input_scale=scale, input_shift=shift, threshold=threshold, reset=reset,
                               intensity=threshold.clone(), weight=torch.ones(1, dtype=torch.float64),
                               output_bias=torch.zeros((), dtype=torch.float64))
    x = (codes + 0.5) / 32  # inside each of the 32 cells
    assert torch.equal(mbe_forward(x, parameters=parameters, time_steps=time_steps), codes / 32)
    digits = torch.stack([(codes.long() >> (time_steps - t)) & 1 for t in range(1, time_steps + 1)]).double()
    assert torch.equal(mbe_spike_train(x, parameters=parameters, time_steps=time_steps)[:, 0], digits)


@pytest.fixture(scope="module")
def gelu_fit():
    return fit_mbe("gelu", bases=2, time_steps=4, input_range=(-6.0, 6.0), **FAST)


def test_fitted_gelu_meets_its_recorded_errors(gelu_fit):
    x = fit_samples("gelu", input_range=(-6.0, 6.0), sample_count=256)
    error = gelu_fit(x) - exact_values("gelu", x)
    assert math.isclose(float((error * error).mean()), gelu_fit.mse, rel_tol=1e-12)
    assert float(error.abs().max()) == gelu_fit.max_error
    # Anywhere in the range, in float32: the neuron is constant between cell boundaries, so
    # its error exceeds the dense-grid maximum by at most Lipschitz(GELU) × (grid spacing +
    # a float32 shift of a boundary).
    lipschitz = 1.13  # max |GELU'| = Φ(√2) + √2·φ(√2)
    spacing = (gelu_fit.upper - gelu_fit.lower) / (fitting._CHECK_POINTS - 1)
    fresh = torch.empty(20000).uniform_(gelu_fit.lower, gelu_fit.upper, generator=torch.Generator().manual_seed(1))
    error32 = (gelu_fit(fresh) - exact_values("gelu", fresh.double()).float()).abs()
    assert float(error32.max()) <= gelu_fit.grid_max_error + lipschitz * (spacing + 1e-5)
    # Mean square error on fresh draws from the fit's distribution (uniform on the range).
    assert float((error32.double() ** 2).mean()) <= 1.2 * gelu_fit.mse


def test_fit_is_deterministic(gelu_fit):
    again = fit_mbe("gelu", bases=2, time_steps=4, input_range=(-6.0, 6.0), **FAST)
    assert again.parameters.equal(gelu_fit.parameters) and again.digest == gelu_fit.digest
    samples = torch.randn(3000, generator=torch.Generator().manual_seed(0)) * 1.5 - 1
    shuffled = samples[torch.randperm(3000, generator=torch.Generator().manual_seed(2))]
    one = fit_mbe("silu", bases=1, time_steps=2, samples=samples, **FAST)
    two = fit_mbe("silu", bases=1, time_steps=2, samples=shuffled.view(30, 100), **FAST)
    assert one.parameters.equal(two.parameters)  # the samples' order and shape do not matter


def test_more_bases_and_steps_fit_better():
    coarse = fit_mbe("tanh", bases=1, time_steps=3, input_range=(-4.0, 4.0), **FAST)
    fine = fit_mbe("tanh", bases=3, time_steps=6, input_range=(-4.0, 4.0), **FAST)
    assert fine.mse < coarse.mse


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("PARASNN_CACHE", str(tmp_path))
    first = fit_mbe("sigmoid", bases=2, time_steps=3, input_range=(-5.0, 5.0), sample_count=256)
    path = cache_path(ScalarFunction.SIGMOID, bases=2, time_steps=3, digest=first.digest)
    assert path.parent == tmp_path / "mbe" and path.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("refitted instead of loading the cache")

    monkeypatch.setattr(fitting, "_fit", refuse)
    second = fit_mbe("sigmoid", bases=2, time_steps=3, input_range=(-5.0, 5.0), sample_count=256)
    assert second.parameters.equal(first.parameters)
    assert (second.mse, second.max_error, second.lower, second.upper) == (first.mse, first.max_error, first.lower,
                                                                          first.upper)
    monkeypatch.undo()

    path.write_text(path.read_text()[:50])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        third = fit_mbe("sigmoid", bases=2, time_steps=3, input_range=(-5.0, 5.0), sample_count=256,
                        cache_dir=tmp_path / "mbe")
    assert third.parameters.equal(first.parameters)
    assert json.loads(path.read_text())["digest"] == first.digest  # rewritten


@pytest.mark.parametrize("function", ["exp", "reciprocal", "rsqrt"])
def test_decomposed_functions_over_many_decades(function):
    fit = fit_mbe(function, bases=2, time_steps=5, **FAST)
    lower, upper = fixed_interval(function)
    assert (fit.lower, fit.upper) == (lower, upper)
    if function == "exp":
        x = torch.linspace(-60.0, 60.0, 4001, dtype=torch.float64)
    else:
        x = torch.logspace(-30, 30, 4001, dtype=torch.float64)
    relative = ((fit(x) - exact_values(function, x)) / exact_values(function, x)).abs()
    # g is monotone on the interval, so its smallest value is at an end.
    grid = torch.linspace(lower, upper, 3, dtype=torch.float64)
    smallest = float(target_values(function, grid).abs().min())
    spacing = (fit.upper - fit.lower) / (fitting._CHECK_POINTS - 1)
    lipschitz = {"exp": math.log(4), "reciprocal": 4.0, "rsqrt": 0.5 * 0.5**-1.5}[function]  # max |g'|
    bound = (fit.grid_max_error + lipschitz * spacing) / smallest
    assert float(relative.max()) <= bound + 60 * 2e-16  # exp: + rounding of x·log2(e)
    assert bound < 0.05
    # The exponent is exact: scaling by a power of two scales the output exactly.
    probe = torch.linspace(0.3, 7.0, 101, dtype=torch.float64)
    scaled = fit(probe * 2.0**40)
    expected = {"exp": None, "reciprocal": fit(probe) * 2.0**-40, "rsqrt": fit(probe) * 2.0**-20}[function]
    if expected is not None:
        assert torch.equal(scaled, expected)


@pytest.mark.parametrize("function", ["exp", "reciprocal", "rsqrt", "gelu"])
def test_neuron_layer_computes_the_whole_function_in_both_forms(function):
    source = {} if function != "gelu" else dict(input_range=(-4.0, 4.0))
    fit = fit_mbe(function, bases=2, time_steps=3, **source, **FAST)
    neuron = fit.neuron(torch.float64)
    x = torch.tensor([[-3.0, -0.5, 0.0, 1e-3], [0.7, 2.5, 123.0, 6e20]], dtype=torch.float64)
    parallel = neuron(x, time_steps=3)
    # NaN (rsqrt of a negative) is not equal to itself: compare NaN positions, then the rest.
    assert torch.equal(parallel.isnan(), fit(x).isnan())
    assert torch.equal(parallel.nan_to_num(), fit(x).nan_to_num())
    state, outputs = neuron.initial_state(x, time_steps=3), []
    for _ in range(3):
        state, output = neuron.step(state, torch.zeros_like(x), time_steps=3)
        outputs.append(output)
    readout = neuron.readout(state)
    assert torch.equal(readout.isnan(), parallel.isnan())
    assert torch.equal(readout.nan_to_num(), parallel.nan_to_num())
    torch.testing.assert_close(torch.stack(outputs).mean(0), parallel, equal_nan=True)
    assert neuron.spike_train(x, time_steps=3).shape == (3, 2, 2, 4)


def test_decomposed_edge_values():
    reciprocal = fit_mbe("reciprocal", bases=1, time_steps=2, **FAST)
    rsqrt = fit_mbe("rsqrt", bases=1, time_steps=2, **FAST)
    zero = torch.tensor([0.0, -0.0, -2.0])
    assert reciprocal(zero)[:2].tolist() == [math.inf, -math.inf] and reciprocal(zero)[2] < 0
    assert rsqrt(zero)[0] == math.inf and math.isnan(rsqrt(zero)[2])
    exp = fit_mbe("exp", bases=1, time_steps=2, **FAST)
    assert exp(torch.tensor([1000.0, -1000.0])).tolist() == [math.inf, 0.0]


def test_bad_inputs_give_clear_errors(gelu_fit):
    with pytest.raises(ValueError, match="bases must be an integer >= 1"):
        fit_mbe("gelu", bases=0, time_steps=4, input_range=(-1, 1))
    with pytest.raises(ValueError, match="time_steps must be an integer >= 1"):
        fit_mbe("gelu", bases=2, time_steps=0, input_range=(-1, 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_mbe("gelu", bases=2, time_steps=4, samples=torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="exactly one of samples"):
        fit_mbe("gelu", bases=2, time_steps=4)
    with pytest.raises(ValueError, match="lower < upper"):
        fit_mbe("gelu", bases=2, time_steps=4, input_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="fixed mantissa interval"):
        fit_mbe("exp", bases=2, time_steps=4, input_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="unknown scalar function 'relu6'"):
        fit_mbe("relu6", bases=2, time_steps=4, input_range=(-1.0, 1.0))
    neuron = gelu_fit.neuron()
    with pytest.raises(ValueError, match="fitted for time_steps=4, got time_steps=8"):
        neuron(torch.zeros(3), time_steps=8)
    with pytest.raises(ValueError, match="fitted for time_steps=4"):
        mbe_forward(torch.zeros(3), parameters=gelu_fit.parameters, time_steps=2)
    with pytest.raises(ValueError, match="MBEParameters.reset must have shape"):
        MBEParameters(**{**gelu_fit.parameters.as_dict(), "reset": torch.zeros(2, 3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="step must be an integer in 1..4"):
        mbe_step(mbe_initial_state(torch.zeros(2), parameters=gelu_fit.parameters), parameters=gelu_fit.parameters,
                 step=5)


def test_neuron_follows_dtype_and_state_dict(gelu_fit):
    neuron = gelu_fit.neuron()
    assert neuron.threshold.dtype == torch.float32 and "bases=2, time_steps=4" in repr(neuron)
    copy = MBENeuron(gelu_fit.parameters.to(torch.float32))
    copy.load_state_dict(neuron.state_dict())
    x = torch.linspace(-6, 6, 101)
    assert torch.equal(copy(x, time_steps=4), neuron(x, time_steps=4))
    assert torch.equal(neuron.spike_count(x, time_steps=4), neuron.spike_train(x, time_steps=4).sum((0, 1)))


@pytest.mark.parametrize("time_steps", [32])
def test_a_fit_with_more_digits_than_samples_holds_between_the_samples(time_steps):
    """At T = 32 the finest binary digits split [0, 1) more finely than the 4096 fitting
    samples do; the fit must still hold on a grid it never saw (it failed with MSE 5.5)."""
    fit = fit_mbe("exp", bases=4, time_steps=time_steps, cache=False)
    grid = torch.rand(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    error = mbe_forward(grid, parameters=fit.parameters, time_steps=time_steps) - torch.exp2(grid)
    assert float((error * error).mean()) < 1e-5
    assert float((error * error).mean()) < 10 * fit.mse + 1e-9
