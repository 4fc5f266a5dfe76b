"""The fused network's compiled plans (parasnn.simulation.compiled): the same bits as the
unfused network, and the modules' path wherever a plan would not be exact."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from parasnn.conversion.stages import convert
from parasnn.neurons import fused
from parasnn.simulation.compiled import MAX_PLANS, FusedNetwork, fuse
from parasnn.zoo.models import ActivationSpec, ModelSpec, build_model


@pytest.fixture(scope="module")
def kernels():
    built = fused.cpu_kernels()
    assert built is not None, "the fused CPU kernels must build on the test machine (gcc + ninja)"
    return built


def _network(name="resnet20", shape=(3, 12, 12)):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, input_shape=shape, num_classes=10, width=4,
                                  activation=ActivationSpec(kind="qcfs", levels=4, threshold=1.0))).eval()
    return convert(model)


@pytest.mark.parametrize("name,shape", [("vgg-small", (1, 12, 12)), ("resnet20", (3, 12, 12))])
def test_plan_is_bit_equal_and_used(kernels, name, shape, monkeypatch):
    network = _network(name, shape)
    fast = fuse(network)
    assert isinstance(fast, FusedNetwork)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for time_steps in (1, 4, 64):
            for batch in (1, 3):
                x = torch.randn(batch, *shape, generator=generator)
                expected = network(x, time_steps=time_steps)
                assert torch.equal(fast(x, time_steps=time_steps), expected)  # makes the plan
                plan = fast._plans[next(reversed(fast._plans))]
                with monkeypatch.context() as patch:  # the plan runs: no neuron module is called
                    for _, neuron in fast.neurons():
                        patch.setattr(neuron, "forward", None)
                    assert torch.equal(fast(x, time_steps=time_steps), expected)
                assert plan.valid()
    assert len(fast._plans) == min(6, MAX_PLANS)


def test_plan_follows_parameter_changes(kernels):
    network = _network()
    fast = fuse(network)  # shares every tensor with network
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast(x, time_steps=4)
        path, neuron = next(iter(network.neurons()))
        neuron.threshold.mul_(0.5)  # in place: the version counter moves
        expected = network(x, time_steps=4)
        assert torch.equal(fast(x, time_steps=4), expected)
        neuron.temporal_bias = nn.Parameter(torch.full_like(neuron.temporal_bias, 0.1))  # a new tensor, in both
        dict(fast.neurons())[path].temporal_bias = neuron.temporal_bias
        expected = network(x, time_steps=4)
        assert torch.equal(fast(x, time_steps=4), expected)


def test_hooks_and_gradients_take_the_module_path(kernels):
    network = _network()
    fast = fuse(network)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast(x, time_steps=4)
        seen = []
        _, neuron = next(iter(fast.neurons()))
        handle = neuron.register_forward_hook(lambda module, args, output: seen.append(output.shape))
        assert torch.equal(fast(x, time_steps=4), network(x, time_steps=4))
        handle.remove()
        assert len(seen) == 1  # the hook ran: the plan was not used while it was registered
    assert torch.equal(fast(x, time_steps=4).detach(), network(x, time_steps=4).detach())  # autograd on


def test_bad_inputs_still_rejected(kernels):
    fast = fuse(_network())
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        fast(x, time_steps=4)
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN or infinite"):
            fast(bad, time_steps=4)
        bad[0, 0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match="NaN or infinite"):
            fast(bad, time_steps=4)
        huge = torch.full_like(x, 3e38)  # finite values whose sum overflows: accepted
        assert torch.equal(fast(huge, time_steps=4), _network()(huge, time_steps=4))
        with pytest.raises(ValueError, match="time_steps"):
            fast(x, time_steps=0)


def test_copies_and_saves_drop_plans(kernels):
    fast = fuse(_network())
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        expected = fast(x, time_steps=2)
        buffer = io.BytesIO()
        torch.save(fast, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert isinstance(loaded, FusedNetwork) and not loaded._plans
        assert torch.equal(loaded(x, time_steps=2), expected)
        assert torch.equal(copy.deepcopy(fast)(x, time_steps=2), expected)


@pytest.mark.parametrize("name", ["mobilenet_v2"])  # densenet121 checked by hand: ~20 s here
def test_plan_on_torchvision_networks(kernels, name):
    """Depthwise convolutions, ReLU6 turned QCFS, inverted residuals."""
    torchvision = pytest.importorskip("torchvision")
    from parasnn.conversion.stages import quantize_relus
    torch.manual_seed(0)
    relu = getattr(torchvision.models, name)(num_classes=10).eval()
    network = convert(quantize_relus(relu, [(torch.randn(4, 3, 32, 32), None)], levels=4))
    fast = fuse(network)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = network(x, time_steps=8)
        assert torch.equal(fast(x, time_steps=8), expected)
        assert len(fast._plans) == 1
        assert torch.equal(fast(x, time_steps=8), expected)


def test_no_plan_is_remembered_and_hooks_make_none(kernels, monkeypatch):
    from parasnn.simulation import compiled
    fast = fuse(_network())
    x = torch.randn(1, 3, 12, 12)
    built = []
    original = compiled.build_plan
    monkeypatch.setattr(compiled, "build_plan", lambda *a: built.append(1) or (original(*a)[0], None))
    with torch.no_grad():
        expected = _network()(x, time_steps=2)
        for _ in range(3):  # one attempt, then the modules without trying again
            assert torch.equal(fast(x, time_steps=2), expected)
        assert len(built) == 1
        _, neuron = next(iter(fast.neurons()))
        handle = neuron.register_forward_pre_hook(lambda module, args: None)
        assert torch.equal(fast(x, time_steps=3), _network()(x, time_steps=3))
        handle.remove()
        assert len(built) == 1  # hooked: no plan was attempted


def test_plan_follows_a_change_of_the_levels_a_neuron_keeps(kernels):
    """At T = 8 > L = 4 a neuron counts over min(T, L) steps; the plan bakes that in, so a
    changed ``levels`` must invalidate it (the result then follows the new levels)."""
    network = _network()
    fast = fuse(network)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast(x, time_steps=8)
        for (_, neuron), (_, fused) in zip(network.neurons(), fast.neurons()):
            neuron.levels = fused.levels = None  # every neuron takes T levels now (the copies own the attribute)
        expected = network(x, time_steps=8)
        assert torch.equal(fast(x, time_steps=8), expected)


def test_plan_calls_the_network_layers_and_follows_a_replaced_one(kernels, monkeypatch):
    """The plan calls the network's own layer objects (a hook on a convolution still runs)
    and is invalid once a layer is replaced in its parent (the new layer is used)."""
    network = _network("vgg-small", (1, 12, 12))
    fast = fuse(network)
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(6))
    path, conv = next((p, m) for p, m in fast.graph_module.named_modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        fast(x, time_steps=4)  # makes the plan
        seen = []
        handle = conv.register_forward_hook(lambda module, args, output: seen.append(output.shape))
        expected = network(x, time_steps=4)  # (fuse copied the layers: this hook is not on network's)
        with monkeypatch.context() as patch:  # the plan runs: no neuron module is called
            for _, neuron in fast.neurons():
                patch.setattr(neuron, "forward", None)
            assert torch.equal(fast(x, time_steps=4), expected)
        handle.remove()
        assert len(seen) == 1  # the plan called the layer object that is in the fused network
        plan = fast._plans[next(reversed(fast._plans))]
        assert plan.valid()
        replacement = copy.deepcopy(conv)
        replacement.weight.mul_(-1.0)
        parent_path, _, leaf = path.rpartition(".")
        setattr(fast.graph_module.get_submodule(parent_path), leaf, replacement)
        assert not plan.valid()
        setattr(network.graph_module.get_submodule(parent_path), leaf, replacement)
        assert torch.equal(fast(x, time_steps=4), network(x, time_steps=4))


def test_plan_module_holds_layers_as_plain_attributes(kernels):
    """The plan's module reads its layers and constants from its instance dictionary (no
    ``nn.Module.__getattr__`` per access) and owns no state of its own."""
    fast = fuse(_network())
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        fast(x, time_steps=4)
    plan = fast._plans[next(reversed(fast._plans))]
    module = plan.graph_module
    assert not module._modules and not module._buffers and not module._parameters
    targets = [node.target for node in module.graph.nodes if node.op in ("call_module", "get_attr")]
    assert targets and all("." not in target and target in module.__dict__ for target in targets)


class _Gained(nn.Module):
    """A network whose graph reads a parameter and a buffer directly (fx get_attr nodes)."""

    def __init__(self):
        super().__init__()
        from parasnn.neurons.qcfs import QCFS
        self.body = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
        self.act = QCFS(levels=4, threshold=1.0)
        self.gain = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.register_buffer("offset", torch.randn(1, 4, 1, 1))
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc((self.act(self.body(x)) * self.gain + self.offset).flatten(1))


def test_plan_reads_attributes_live_and_follows_a_replaced_one(kernels):
    torch.manual_seed(0)
    network = convert(_Gained().eval())
    fast = fuse(network)
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(fast(x, time_steps=4), network(x, time_steps=4))  # makes the plan
        plan = fast._plans[next(reversed(fast._plans))]
        fast.graph_module.gain.mul_(2.0)  # shared with network, in place: the plan reads it live
        assert torch.equal(fast(x, time_steps=4), network(x, time_steps=4)) and plan.valid()
        replacement = torch.randn(1, 4, 1, 1)
        fast.graph_module.offset = replacement  # a new buffer in the fused network only
        assert not plan.valid()
        network.graph_module.offset = replacement
        assert torch.equal(fast(x, time_steps=4), network(x, time_steps=4))
