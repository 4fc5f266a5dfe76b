"""The fused spiking kernels give exactly the reference's bits, and fall back to it.

The first run on a machine compiles the C++ operator (1–5 min on a loaded 2-core box);
later runs load it from PyTorch's extension cache."""
from __future__ import annotations

import functools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from parasnn.conversion.stages import convert
from parasnn.neurons import IFNeuron, PolarityMultiSpikeNeuron
from parasnn.neurons import fused
from parasnn.neurons.fused import (FusedIFNeuron, FusedPolarityNeuron, fused_if_forward, fused_neuron,
                                   fused_polarity_forward, reference_if_forward, reference_polarity_forward)
from parasnn.simulation.compiled import fuse, fused_layer_count
from parasnn.zoo.models import ActivationSpec, ModelSpec, build_model


@pytest.fixture(scope="module")
def kernels():
    built = fused.cpu_kernels()
    assert built is not None, "the fused CPU kernels must build on the test machine (gcc + ninja)"
    return built


def _edge_currents(shape, *, time_steps, threshold, shift, generator, dtype=torch.float32):
    """Random currents mixed with edge values: counts exactly on level boundaries
    (``(k·θ − ψ)/T`` for k = −1 … T + 1), negatives, far above ``T``, zeros, ±inf."""
    current = torch.randn(shape, generator=generator, dtype=torch.float64) * 2.0
    flat = current.view(-1)
    levels = torch.arange(-1, time_steps + 2, dtype=torch.float64)
    boundaries = (levels * float(threshold.flatten()[0]) - float(shift.flatten()[0])) / time_steps
    n = min(flat.numel() // 2, boundaries.numel())
    flat[:n] = boundaries[:n]
    extra = torch.tensor([0.0, -0.0, -1e6, 1e6, float("inf"), -float("inf"), 3.0 * time_steps], dtype=torch.float64)
    m = min(extra.numel(), flat.numel() - n)
    flat[n:n + m] = extra[:m]
    return current.to(dtype)


def _if_constants(neuron: IFNeuron, current, time_steps):
    constants = neuron.inference_constants(current, time_steps)
    assert constants is not None
    pre_shift, shift, threshold, scale = constants
    return dict(time_steps=time_steps, pre_shift=pre_shift, shift=shift, threshold=threshold, scale=scale)


def _random_if_neuron(channels, *, generator, calibrated, per_channel):
    size = (channels,) if per_channel else ()
    threshold = torch.rand(size, generator=generator) * 2 + 0.25
    neuron = IFNeuron(threshold=threshold)
    if calibrated:
        neuron.amplitude = threshold + torch.randn(size, generator=generator) * 0.1
        neuron.pre_shift = torch.randn(size, generator=generator) * 0.1
        neuron.temporal_bias = nn.Parameter(torch.rand(size, generator=generator) * 0.2)
    return neuron


@pytest.mark.parametrize("time_steps", [1, 2, 7, 64])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (4, 9), (2, 5, 1, 1), (1, 5, 33)])
@pytest.mark.parametrize("per_channel,calibrated", [(False, False), (True, False), (True, True), (False, True)])
def test_fused_if_equals_reference(kernels, time_steps, shape, per_channel, calibrated):
    generator = torch.Generator().manual_seed(time_steps * 1000 + len(shape))
    neuron = _random_if_neuron(shape[1], generator=generator, calibrated=calibrated, per_channel=per_channel)
    current = _edge_currents(shape, time_steps=time_steps, threshold=neuron.threshold, shift=neuron.shift,
                             generator=generator)
    with torch.no_grad():
        arguments = _if_constants(neuron, current, time_steps)
        assert (arguments["pre_shift"] is not None) == calibrated
        expected = reference_if_forward(current, **arguments)
        assert torch.equal(fused_if_forward(current, **arguments), expected)
        assert torch.equal(expected, neuron(current, time_steps=time_steps))  # the reference is the neuron
        assert torch.equal(fused_neuron(neuron)(current, time_steps=time_steps), expected)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(min_value=-1e3, max_value=1e3, width=32), min_size=1, max_size=40),
       time_steps=st.integers(1, 80), threshold=st.floats(2.0**-10, 16.0, width=32),
       shift=st.floats(-2.0, 2.0, width=32), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fused_if_property(kernels, values, time_steps, threshold, shift, dtype):
    current = torch.tensor(values, dtype=dtype).view(1, -1)
    arguments = dict(time_steps=time_steps, pre_shift=None, shift=torch.tensor(shift, dtype=dtype),
                     threshold=torch.tensor(threshold, dtype=dtype), scale=torch.tensor(threshold, dtype=dtype) / time_steps)
    assert torch.equal(fused_if_forward(current, **arguments), reference_if_forward(current, **arguments))


def test_fused_if_nan_propagates(kernels):
    current = torch.tensor([[float("nan"), 1.0, -float("nan")]])
    arguments = dict(time_steps=4, pre_shift=None, shift=torch.tensor(0.5), threshold=torch.tensor(1.0),
                     scale=torch.tensor(0.25))
    out, expected = fused_if_forward(current, **arguments), reference_if_forward(current, **arguments)
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(out[~out.isnan()], expected[~expected.isnan()])


# -- the differentiable forward and its gradient (calibration's training passes) -------------


def _assert_same_bits(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])


def _parameter(per_channel, shape, *, low, spread, generator, dtype):
    """A 0-dim or per-channel value, viewed as :func:`per_channel` views it for ``shape``."""
    channels = shape[1] if len(shape) > 1 else 1
    per = per_channel and len(shape) > 1
    value = (torch.rand(channels if per else (), generator=generator, dtype=torch.float64) * spread + low).to(dtype)
    return value.view((-1,) + (1,) * (len(shape) - 2)) if per else value


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(3, 5, 4, 6), (4, 9), (2, 5, 1, 1), (1, 5, 33), (7,), (2, 3, 40, 40)]),
       time_steps=st.integers(1, 40), width=st.sampled_from([1.0, 0.5, 1.3]),
       per_channel=st.lists(st.booleans(), min_size=5, max_size=5),
       wanted=st.sampled_from([(True, True), (True, False), (False, True)]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_fused_if_backward_equals_reference(kernels, shape, time_steps, width, per_channel, wanted, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    make = functools.partial(_parameter, shape=shape, generator=generator, dtype=dtype)
    threshold = make(per_channel[0], low=0.25, spread=2.0)
    shift = make(per_channel[1], low=-0.5, spread=1.0)
    bias = make(per_channel[2], low=-0.2, spread=0.4)
    pre_shift = make(per_channel[3], low=-0.1, spread=0.2)
    scale = make(per_channel[4], low=0.1, spread=1.0)
    current = _edge_currents(shape, time_steps=time_steps, threshold=threshold, shift=shift, generator=generator,
                             dtype=dtype)
    flat = current.view(-1)
    if flat.numel() > 10:  # surrogate edges: v_t − θ exactly 0 and ±width·θ at step t = T
        theta, psi = float(threshold.flatten()[0]), float(shift.flatten()[0])
        charge = torch.tensor([theta, theta * (1 + width), theta * (1 - width)], dtype=dtype) - psi - \
            float(bias.flatten()[0])
        flat[-3:] = charge / time_steps - float(pre_shift.flatten()[0])
        flat[-4] = float("nan")
    grad = torch.randn(shape, generator=generator, dtype=dtype)
    arguments = dict(pre_shift=pre_shift, shift=shift, threshold=threshold, temporal_bias=bias, scale=scale,
                     time_steps=time_steps, width=width, current_gradient=wanted[0], bias_gradient=wanted[1])
    expected = fused.reference_if_backward(grad, current, **arguments)
    got = fused.fused_if_backward(grad, current, **arguments)
    for a, b, asked in zip(got, expected, wanted):
        if asked:
            _assert_same_bits(a, b)
        else:
            assert a is None and b is None


def _gradients(neuron, current, time_steps, weights):
    """The output, and the gradients of a weighted sum of it for the current and Δb (where
    they require one)."""
    current.grad, neuron.temporal_bias.grad = None, None
    output = neuron(current, time_steps=time_steps)
    (output * weights).sum().backward()
    grads = tuple(t.grad.clone() if t.requires_grad else None for t in (current, neuron.temporal_bias))
    return output.detach(), grads


@pytest.mark.parametrize("time_steps,levels", [(1, None), (2, None), (7, None), (8, 4)])
@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (5, 6)])
@pytest.mark.parametrize("per_channel,calibrated", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("wanted", [(True, True), (True, False), (False, True)])
def test_fused_neuron_trains_with_the_references_bits(kernels, time_steps, levels, shape, per_channel, calibrated,
                                                     wanted):
    generator = torch.Generator().manual_seed(time_steps + 10 * len(shape))
    reference = _random_if_neuron(shape[1], generator=generator, calibrated=calibrated, per_channel=per_channel)
    reference.levels = levels
    reference.temporal_bias.requires_grad_(wanted[1])
    fast = fused_neuron(reference)
    current = (torch.randn(shape, generator=generator) * 2).requires_grad_(wanted[0])
    weights = torch.randn(shape, generator=generator)
    calls = []
    backward = fused.fused_if_backward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused, "fused_if_backward", lambda *a, **k: calls.append(1) or backward(*a, **k))
        fast_output, fast_grads = _gradients(fast, current, time_steps, weights)
    assert calls, "the fused neuron's gradient must come from the fused backward"
    reference_output, reference_grads = _gradients(reference, current, time_steps, weights)
    assert torch.equal(fast_output, reference_output)
    for a, b in zip(fast_grads, reference_grads):
        assert (a is None and b is None) or torch.equal(a, b)
    assert any(g is not None and g.abs().sum() > 0 for g in fast_grads)


def test_fused_neuron_leaves_other_gradients_to_the_parent(kernels):
    generator = torch.Generator().manual_seed(4)
    reference = _random_if_neuron(6, generator=generator, calibrated=True, per_channel=True)
    reference.amplitude.requires_grad_(True)  # a gradient the fused backward does not give
    fast = fused_neuron(reference)
    current = torch.randn(3, 6, 4, 4, generator=generator).requires_grad_(True)
    calls = []
    backward = fused.fused_if_backward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused, "fused_if_backward", lambda *a, **k: calls.append(1) or backward(*a, **k))
        fast(current, time_steps=3).sum().backward()
    assert not calls and reference.amplitude.grad is not None


@pytest.mark.parametrize("time_steps", [1, 3, 16, 64])
@pytest.mark.parametrize("levels", [(0, 1), (2, 2), (4, 1), (3, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_polarity_equals_reference(kernels, time_steps, levels, dtype):
    negative, positive = levels
    generator = torch.Generator().manual_seed(time_steps + 10 * negative + 100 * positive)
    threshold = (torch.rand((), generator=generator) + 0.1).to(dtype)
    current = (torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64) * 3).to(dtype)
    flat = current.view(-1)
    # N exactly on rounding boundaries: T·z/θ + 1/2 = k
    steps = torch.arange(-negative * time_steps - 1, positive * time_steps + 2, dtype=torch.float64)
    n = min(steps.numel(), flat.numel() // 2)
    flat[:n] = ((steps[:n] - 0.5) * float(threshold) / time_steps).to(dtype)
    flat[n:n + 3] = torch.tensor([float("inf"), -float("inf"), 0.0], dtype=dtype)
    arguments = dict(time_steps=time_steps, threshold=threshold, negative_levels=negative, positive_levels=positive)
    expected = reference_polarity_forward(current, **arguments)
    assert torch.equal(fused_polarity_forward(current, **arguments), expected)
    neuron = PolarityMultiSpikeNeuron(threshold=float(threshold), positive_levels=positive, negative_levels=negative)
    if dtype == torch.float32:
        with torch.no_grad():
            assert torch.equal(fused_neuron(neuron)(current, time_steps=time_steps), neuron(current, time_steps=time_steps))


def test_uncovered_inputs_take_the_reference(kernels):
    generator = torch.Generator().manual_seed(3)
    neuron = _random_if_neuron(6, generator=generator, calibrated=True, per_channel=True)
    fast = fused_neuron(neuron)
    current = torch.randn(2, 6, 4, 4, generator=generator)
    strided = current.transpose(2, 3)  # not contiguous
    with torch.no_grad():
        assert torch.equal(fast(strided, time_steps=5), neuron(strided, time_steps=5))
        half = current.to(torch.bfloat16)  # parameters float32: the out-of-place reference promotes
        assert torch.equal(fast(half, time_steps=5), neuron(half, time_steps=5))
    # with gradients: the differentiable reference, the same gradients
    leaf = current.clone().requires_grad_(True)
    leaf_ref = current.clone().requires_grad_(True)
    fast(leaf, time_steps=5).sum().backward()
    neuron(leaf_ref, time_steps=5).sum().backward()
    assert torch.equal(leaf.grad, leaf_ref.grad)


def test_bad_time_steps_rejected(kernels):
    neuron = fused_neuron(PolarityMultiSpikeNeuron(threshold=1.0, positive_levels=1, negative_levels=1))
    with torch.no_grad(), pytest.raises(ValueError, match="time_steps"):
        neuron(torch.zeros(1, 2), time_steps=0)
    with torch.no_grad(), pytest.raises(ValueError, match="time_steps"):
        fused_neuron(IFNeuron(threshold=1.0))(torch.zeros(1, 2), time_steps=True)


def test_fused_neuron_shares_and_keeps_types():
    neuron = IFNeuron(threshold=torch.ones(3))
    fast = fused_neuron(neuron)
    assert type(fast) is FusedIFNeuron and isinstance(fast, IFNeuron)
    assert fast.threshold is neuron.threshold and fast.temporal_bias is neuron.temporal_bias
    fast.pre_shift = torch.ones(3)  # re-registering on the copy leaves the original alone
    assert neuron.pre_shift.dim() == 0
    assert type(fused_neuron(PolarityMultiSpikeNeuron(threshold=1.0, positive_levels=1, negative_levels=1))) \
        is FusedPolarityNeuron
    other = nn.ReLU()
    assert fused_neuron(other) is other


@pytest.mark.parametrize("name", ["vgg-small", "resnet20"])
def test_fuse_network_bit_equal(kernels, name, monkeypatch):
    shape = (1, 28, 28) if name == "vgg-small" else (3, 16, 16)
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, input_shape=shape, num_classes=10, width=8,
                                  activation=ActivationSpec(kind="qcfs", levels=4, threshold=1.0))).eval()
    network = convert(model)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    channels_of = {}
    hooks = [neuron.register_forward_pre_hook(lambda m, args, kwargs: channels_of.__setitem__(m, args[0].shape[1]),
                                              with_kwargs=True) for _, neuron in network.neurons()]
    with torch.no_grad():
        network(x, time_steps=2)
    for hook in hooks:
        hook.remove()
    for index, (_, neuron) in enumerate(network.neurons()):  # per-channel calibration terms
        channels = channels_of[neuron]
        generator = torch.Generator().manual_seed(index)
        neuron.pre_shift = torch.randn(channels, generator=generator) * 0.05 if index % 2 else torch.zeros(())
        neuron.temporal_bias = nn.Parameter(torch.rand(channels, generator=generator) * 0.1)
    fast = fuse(network)
    assert fused_layer_count(fast) == sum(1 for _ in network.neurons()) > 0 and fused_layer_count(network) == 0
    with torch.no_grad():
        for time_steps in (1, 4, 32):
            expected = network(x, time_steps=time_steps)
            with monkeypatch.context() as patch:  # the fused network must not take the reference path
                patch.setattr(fused, "reference_if_forward", None)
                assert torch.equal(fast(x, time_steps=time_steps), expected)


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated: no compiler\nsecond line")

    import torch.utils.cpp_extension as cpp_extension
    monkeypatch.setattr(cpp_extension, "load_inline", broken)
    fused.cpu_kernels.cache_clear()
    try:
        neuron = IFNeuron(threshold=0.7)
        network = convert(nn.Sequential(nn.Flatten(), nn.Linear(6, 4), build_qcfs()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast = fuse(network)
            x = torch.randn(3, 6)
            with torch.no_grad():
                assert torch.equal(fast(x, time_steps=3), network(x, time_steps=3))
                assert torch.equal(fused_neuron(neuron)(x, time_steps=3), neuron(x, time_steps=3))
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "unfused reference" in messages[0] and "\n" not in messages[0]
        assert "simulated: no compiler" in messages[0]
    finally:
        fused.cpu_kernels.cache_clear()  # the next user builds (loads) the real kernels again


def build_qcfs():
    from parasnn.neurons import QCFS
    return QCFS(levels=4, threshold=1.0)


class _Branching(nn.Module):
    """conv → QCFS, where the conv output is also read by a later addition (not dead)."""

    def __init__(self):
        super().__init__()
        from parasnn.neurons import QCFS
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.act = QCFS(levels=4, threshold=1.0)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.act2 = QCFS(levels=4, threshold=1.0)

    def forward(self, x):
        y = self.conv(x)
        return self.act2(self.conv2(self.act(y)) + y)


def test_overwrite_only_dead_currents(kernels):
    torch.manual_seed(0)
    network = convert(_Branching().eval())
    fast = fuse(network)
    flags = {path: neuron.overwrite_input for path, neuron in fast.neurons()}
    assert flags == {"act": False, "act2": True}, flags  # conv output read twice; the sum only by act2
    assert not any(getattr(n, "overwrite_input", False) for _, n in network.neurons())  # original untouched
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        assert torch.equal(fast(x, time_steps=4), network(x, time_steps=4))


def test_hooks_keep_their_tensors(kernels):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="vgg-small", input_shape=(1, 12, 12), num_classes=10, width=4,
                                  activation=ActivationSpec(kind="qcfs", levels=4, threshold=1.0))).eval()
    fast = fuse(convert(model))
    assert any(neuron.overwrite_input for _, neuron in fast.neurons())
    path, neuron = next((p, n) for p, n in fast.neurons() if n.overwrite_input)
    kept = []
    handle = neuron.register_forward_pre_hook(lambda module, args: kept.append((args[0], args[0].clone())))
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        fast(x, time_steps=3)
    handle.remove()
    assert torch.equal(kept[0][0], kept[0][1]), f"{path} overwrote a current a hook was holding"


@pytest.mark.parametrize("name,shape", [("vgg-small", (1, 12, 12)), ("resnet20", (3, 12, 12))])
def test_fuse_pmsm_network_bit_equal(kernels, name, shape, monkeypatch):
    from parasnn.conversion.methods import Method, neuron_factory
    from parasnn.neurons.pmsm import PolarityQuantizer
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, input_shape=shape, num_classes=10, width=4,
                                  activation=ActivationSpec(kind="signed", levels=2))).eval()
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, PolarityQuantizer):
            module.quantized = True
            module.negative_levels = int(torch.randint(0, 4, (1,), generator=generator))
            module.scale.data.fill_(float(torch.rand(1, generator=generator)) + 0.2)
    network = convert(model, neuron=neuron_factory(Method.PMSM))
    fast = fuse(network)
    assert fused_layer_count(fast) == sum(1 for _ in network.neurons()) > 0
    x = torch.randn(3, *shape, generator=generator)
    with torch.no_grad():
        for time_steps in (1, 5, 64):
            expected = network(x, time_steps=time_steps)
            with monkeypatch.context() as patch:  # the kernel, not the reference, must run
                patch.setattr(fused, "reference_polarity_forward", None)
                assert torch.equal(fast(x, time_steps=time_steps), expected)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("time_steps", [1, 7, 64])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (4, 9)])
@pytest.mark.parametrize("per_channel,calibrated", [(False, False), (True, True), (False, True)])
def test_fused_if_equals_reference_on_cuda(time_steps, shape, per_channel, calibrated):
    assert fused.cuda_kernels() is not None, "the fused CUDA kernels must build where a GPU is present"
    generator = torch.Generator().manual_seed(time_steps * 1000 + len(shape))
    neuron = _random_if_neuron(shape[1], generator=generator, calibrated=calibrated, per_channel=per_channel)
    current = _edge_currents(shape, time_steps=time_steps, threshold=neuron.threshold, shift=neuron.shift,
                             generator=generator).cuda()
    neuron = neuron.cuda()
    with torch.no_grad():
        arguments = _if_constants(neuron, current, time_steps)
        expected = reference_if_forward(current, **arguments)
        assert torch.equal(fused_if_forward(current, **arguments), expected)
        assert torch.equal(fused_neuron(neuron)(current, time_steps=time_steps), expected)


@needs_cuda
@pytest.mark.parametrize("time_steps", [1, 16])
def test_fused_polarity_and_network_on_cuda(time_steps):
    threshold = torch.tensor(0.3, device="cuda")
    current = torch.randn(3, 4, 5, 5, device="cuda") * 3
    arguments = dict(time_steps=time_steps, threshold=threshold, negative_levels=2, positive_levels=3)
    assert torch.equal(fused_polarity_forward(current, **arguments), reference_polarity_forward(current, **arguments))
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="resnet20", input_shape=(3, 16, 16), num_classes=10, width=8,
                                  activation=ActivationSpec(kind="qcfs", levels=4, threshold=1.0))).eval()
    network = convert(model).cuda()
    fast = fuse(network)
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.no_grad():
        assert torch.equal(fast(x, time_steps=time_steps), network(x, time_steps=time_steps))


def test_a_second_derivative_through_the_fused_gradient_is_an_error(kernels):
    neuron = fused_neuron(IFNeuron(threshold=torch.tensor(1.0)))
    current = torch.randn(2, 3, 4, 4).requires_grad_(True)
    (first,) = torch.autograd.grad(neuron(current, time_steps=2).sum(), current, create_graph=True)
    with pytest.raises(RuntimeError):
        first.sum().backward()
