"""Exactness claims of docs/maths.md §2–3 for the IF neuron maths."""
import torch
from hypothesis import given
from hypothesis import strategies as st

from parasnn.neurons import (IFNeuron, QCFS, first_spike_step, if_step, parallel_if_count, qcfs, simulate_if,
                             smoothed_heaviside, spike_count, spike_count_by_search, spike_train,
                             spike_train_by_matrix)

# Dyadic grid values (multiples of 1/16, magnitudes < 2^10) are exact in float64, and every
# sum/product of them below is exact too; a quotient by T − t + 1 is rounded but cannot
# cross the threshold (the grid keeps it ≥ 2^-4/64 away, far above float64 rounding).
grid = st.integers(min_value=-4096, max_value=4096).map(lambda n: n / 16)
positive_grid = st.integers(min_value=1, max_value=256).map(lambda n: n / 16)
time_steps = st.integers(min_value=1, max_value=64)


@st.composite
def neuron_case(draw, with_bias=False):
    steps = draw(time_steps)
    threshold = draw(positive_grid)
    shift = draw(st.integers(min_value=0, max_value=16).map(lambda n: n / 16)) * threshold
    bias = draw(st.integers(min_value=-16, max_value=7).map(lambda n: n / 16)) * threshold if with_bias else 0.0
    currents = torch.tensor(draw(st.lists(st.lists(grid, min_size=6, max_size=6), min_size=steps, max_size=steps)),
                            dtype=torch.float64)  # (T, 6)
    return steps, threshold, shift, bias, currents


@given(neuron_case(with_bias=True))
def test_closed_form_equals_binary_search_equals_matrix_form(case):
    steps, threshold, shift, bias, currents = case
    total = currents.sum(0)
    threshold_t, bias_t = torch.tensor(threshold, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    closed = parallel_if_count(total, threshold=threshold_t, shift=torch.tensor(shift, dtype=torch.float64),
                               time_steps=steps, temporal_bias=bias_t)
    searched = spike_count_by_search(total, threshold=threshold, shift=shift, time_steps=steps,
                                     temporal_bias=bias)
    matrix_train = spike_train_by_matrix(currents, threshold=threshold, shift=shift, temporal_bias=bias)
    assert torch.equal(closed, searched)
    assert torch.equal(matrix_train.sum(0), closed)
    # Not only the counts: the spikes sit in the same (last k) steps.
    assert torch.equal(spike_train(closed, time_steps=steps), matrix_train)


@given(neuron_case())
def test_closed_form_without_bias_is_spike_count(case):
    steps, threshold, shift, _, currents = case
    total = currents.sum(0)
    assert torch.equal(
        parallel_if_count(total, threshold=torch.tensor(threshold, dtype=torch.float64),
                          shift=torch.tensor(shift, dtype=torch.float64), time_steps=steps),
        spike_count(total, threshold=threshold, shift=shift, time_steps=steps))


@given(time_steps, positive_grid, st.integers(min_value=0, max_value=15), st.lists(grid, min_size=8, max_size=8))
def test_parallel_count_equals_serial_count_for_constant_input(steps, threshold, shift_sixteenths, values):
    shift = threshold * shift_sixteenths / 16  # ψ in [0, θ): the serial formula's premise
    current = torch.tensor(values, dtype=torch.float64)
    serial = simulate_if(current.expand(steps, -1), threshold=threshold, shift=shift).sum(0)
    parallel = spike_count(steps * current, threshold=threshold, shift=shift, time_steps=steps)
    assert torch.equal(serial, parallel)


@given(st.integers(min_value=1, max_value=16), st.floats(min_value=0.05, max_value=20),
       st.lists(st.floats(min_value=-50, max_value=50, width=32), min_size=1, max_size=64))
def test_if_neuron_at_t_equal_l_reproduces_qcfs_bit_for_bit(levels, threshold, values):
    activation = QCFS(levels=levels, threshold=threshold)
    neuron = IFNeuron.from_qcfs(activation)
    x = torch.tensor(values, dtype=torch.float32).view(1, -1)
    with torch.no_grad():
        expected = activation(x)
        assert torch.equal(neuron(x, time_steps=levels), expected)
        count = neuron.spike_count(x, time_steps=levels)
    level = expected / (activation.effective_threshold() / levels)
    assert torch.equal(count, torch.round(level))


def test_t_different_from_l_agrees_in_expectation_only():
    # docs/maths.md §3: with ψ = θ/2 and inputs uniform over [0, θ], the mean rate is θ/2 for
    # every T — the parallel neuron at T ≠ L matches QCFS(L) on average, not pointwise.
    threshold = 2.0
    x = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000 * threshold
    quantized = qcfs(x, threshold=threshold, levels=4, shift=threshold / 2)
    for steps in (1, 2, 3, 8, 16):
        rate = spike_count(steps * x, threshold=threshold, shift=threshold / 2, time_steps=steps) * threshold / steps
        assert abs(float(rate.mean() - quantized.mean())) < 1e-4
        if steps != 4:
            assert not torch.equal(rate, quantized)


@given(time_steps, st.lists(st.integers(min_value=1, max_value=65), min_size=1, max_size=20))
def test_binary_search_finds_first_step_of_any_monotone_rule(steps, firsts):
    first = torch.tensor([min(f, steps + 1) for f in firsts])
    calls = []

    def rule(step):
        calls.append(1)
        return step >= first

    found = first_spike_step(rule, time_steps=steps, shape=first.shape)
    assert torch.equal(found, first)
    assert len(calls) <= steps.bit_length()  # O(log T) evaluations


def test_serial_step_soft_reset_and_state_passing():
    potential = torch.tensor([0.5, 0.5, 0.5])
    potential, spikes = if_step(potential, torch.tensor([0.25, 0.5, 2.0]), threshold=1.0)
    assert spikes.tolist() == [0.0, 1.0, 1.0]
    assert potential.tolist() == [0.75, 0.0, 1.5]  # soft reset keeps the surplus


def test_spike_train_puts_spikes_in_last_steps():
    train = spike_train(torch.tensor([0.0, 1.0, 3.0]), time_steps=3)
    assert train.T.tolist() == [[0, 0, 0], [0, 0, 1], [1, 1, 1]]


def _smoothed_count(cumulative, shift, threshold, bias, steps, width):
    return sum(smoothed_heaviside(((cumulative + shift) / m + bias - threshold) / threshold, width=width)
               for m in range(1, steps + 1))


@given(st.integers(min_value=1, max_value=16), st.floats(min_value=0.5, max_value=4),
       st.floats(min_value=-0.3, max_value=0.3), st.floats(min_value=0.25, max_value=1.0))
def test_surrogate_gradient_matches_finite_difference_of_smoothed_rule(steps, threshold, bias, width):
    cumulative = torch.linspace(-2, steps * threshold * 1.5, 41, dtype=torch.float64, requires_grad=True)
    bias_t = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(threshold / 2, dtype=torch.float64)
    threshold_t = torch.tensor(threshold, dtype=torch.float64)
    count = parallel_if_count(cumulative, threshold=threshold_t, shift=shift, time_steps=steps,
                              temporal_bias=bias_t, surrogate_width=width)
    count.sum().backward()
    h = 1e-6
    with torch.no_grad():
        plus = _smoothed_count(cumulative, shift, threshold_t, bias_t + h, steps, width).sum()
        minus = _smoothed_count(cumulative, shift, threshold_t, bias_t - h, steps, width).sum()
        assert abs(float(bias_t.grad) - float((plus - minus) / (2 * h))) < 2e-4 * max(1.0, abs(float(bias_t.grad)))
        plus = _smoothed_count(cumulative + h, shift, threshold_t, bias_t, steps, width)
        minus = _smoothed_count(cumulative - h, shift, threshold_t, bias_t, steps, width)
        # FD error is O(h · curvature jump) at the band edges: 1e-6 · 1/(w²θ²)·m ≲ 1e-4.
        assert torch.allclose(cumulative.grad, (plus - minus) / (2 * h), atol=2e-4)


def test_training_through_parallel_neuron_saves_no_time_axis():
    # Stage 2 of the main paper trains through the parallel rule; what autograd keeps for
    # the backward pass must not grow with T.
    def saved_bytes(steps):
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        neuron = IFNeuron(threshold=1.0)
        neuron.temporal_bias = torch.nn.Parameter(torch.zeros(4))
        x = torch.randn(8, 4, 16, 16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            neuron(x, time_steps=steps).sum().backward()
        return total

    assert saved_bytes(1) == saved_bytes(64)


# -- levels beyond L (docs/maths.md §3a) ---------------------------------------------------

@given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=40), st.floats(min_value=0.05, max_value=20),
       st.lists(st.floats(min_value=-50, max_value=50, width=32), min_size=1, max_size=64))
def test_if_neuron_keeps_qcfs_levels_and_is_bit_equal_at_every_t_from_l(levels, extra, threshold, values):
    activation = QCFS(levels=levels, threshold=threshold)
    neuron = IFNeuron.from_qcfs(activation)
    steps = levels + extra
    x = torch.tensor(values, dtype=torch.float32).view(1, -1)
    with torch.no_grad():
        expected = activation(x)
        assert torch.equal(neuron(x, time_steps=steps), expected)
        count = neuron.spike_count(x, time_steps=steps)
        train = neuron.spike_train(x, time_steps=steps)
    assert neuron.levels_at(steps) == levels and int(count.max()) <= levels
    assert torch.equal(count, torch.round(expected / (activation.effective_threshold() / levels)))
    assert train.shape == (steps, *x.shape) and torch.equal(train.sum(0), count)
    # The differentiable path (as calibration uses it) counts at L steps too: same values.
    x.requires_grad_(True)
    assert torch.equal(neuron(x, time_steps=steps).detach(), expected)


def test_a_stand_in_for_a_relu_has_t_levels_at_every_t():
    stand_in = QCFS(levels=4, threshold=1.0)
    stand_in.stand_in = True
    neuron = IFNeuron.from_qcfs(stand_in)
    x = torch.linspace(-0.5, 1.5, 101).view(1, -1)
    assert neuron.levels is None and neuron.levels_at(16) == 16
    with torch.no_grad():
        expected = spike_count(16 * x, threshold=1.0, shift=0.5, time_steps=16) * (1.0 / 16)
        assert torch.equal(neuron(x, time_steps=16), expected)
        assert int(neuron.spike_count(x, time_steps=16).max()) == 16


@given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=3), positive_grid,
       st.lists(grid, min_size=1, max_size=32))
def test_serial_neuron_keeping_levels_emits_the_parallel_count_for_constant_input(levels, power, threshold, values):
    # T = L·2^j: the input scale L/T is a power of two, so the serial sums stay exact.
    steps = levels * 2 ** power
    neuron = IFNeuron(threshold=torch.tensor(threshold, dtype=torch.float64), levels=levels).double()
    current = torch.tensor(values, dtype=torch.float64).view(1, -1)
    state, outputs = neuron.initial_state(current, time_steps=steps), []
    for _ in range(steps):
        state, output = neuron.step(state, current, time_steps=steps)
        outputs.append(output)
    outputs = torch.stack(outputs)
    with torch.no_grad():
        count = neuron.spike_count(current, time_steps=steps)
        parallel = neuron(current, time_steps=steps)
    assert torch.equal(outputs.ne(0).sum(0).to(count.dtype), count)  # the count exactly, at most L spikes
    # each spike worth θ·T/L: the same time average (up to the rounding of the two divisions)
    assert torch.allclose(outputs.sum(0) / steps, parallel, rtol=1e-12, atol=0)
    fired = outputs.ne(0).any(dim=(1, 2)).nonzero().flatten() + 1  # steps t at which anything fired
    assert all((int(t) * levels) % steps < levels for t in fired)  # only at t_j = ⌈j·T/L⌉
