"""The conversion rule registry: a neuron kind and a two-input spiking operation plug in
from one file (this one), with no edits to the converter, the simulator or the energy count."""
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parasnn import convert, parallel_forward, serial_forward
from parasnn.conversion import rules
from parasnn.conversion.graph import ConversionError
from parasnn.evaluation.energy import layer_costs
from parasnn.neurons.base import SerialOp, SpikingNeuron
from parasnn.neurons.qcfs import QCFS
from parasnn.simulation.forms import serial_simulation


# -- a toy neuron kind: a spiking sign function for torch.sign ------------------------------

class SignNeuron(SpikingNeuron):
    """Fires +1 spike at step 1 where the input is positive, −1 where negative: its time
    average is sign(x)/T, scaled back by T so the parallel form equals T·mean = sign."""

    def forward(self, current: Tensor, *, time_steps: int) -> Tensor:
        return torch.sign(current)

    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        return torch.sign(current)

    def initial_state(self, current: Tensor, *, time_steps: int):
        return torch.zeros_like(current)  # the running input sum

    def step(self, state, current: Tensor, *, time_steps: int):
        total = state + current
        # emit the whole sign·T at the first step; later steps correct if the sum changed sign
        emitted = torch.sign(state) * time_steps
        return total, torch.sign(total) * time_steps - emitted


# -- a toy two-input operation: the elementwise product of two activations ---------------------

class PairProduct(SerialOp):
    """Parallel: a·b of the time averages. Serial: at step t emit the new pair products
    (x_t·B_t + A_{t−1}·y_t)/T, whose time average is A_T·B_T/T² = a·b."""

    takes_time_steps = False

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b

    def initial_state(self, a: Tensor, b: Tensor, *, time_steps: int):
        return torch.zeros_like(a), torch.zeros_like(b)

    def step(self, state, a: Tensor, b: Tensor, *, time_steps: int):
        total_a, total_b = state
        new_b = total_b + b
        out = (a * new_b + total_a * b) / time_steps
        return (total_a + a, new_b), out


@pytest.fixture
def toy_rules():
    added = [
        rules.register(rules.function_rule("toy sign", {torch.sign}, rules.Role.SPIKING,
                                           build=lambda gm, node: SignNeuron())),
        rules.register(rules.function_rule(
            "toy product", {torch.mul}, rules.Role.SPIKING, build=lambda gm, node: PairProduct(), inputs=(0, 1),
            when=lambda node, dependent: all(arg in dependent for arg in node.args[:2]))),
    ]
    rules.register_cost((PairProduct,), lambda module, inputs, output: rules.OperationCost(
        elementwise=output[0].numel()))
    yield added
    for rule in added:
        rules.unregister(rule.name)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 3)
        self.q1, self.q2 = QCFS(levels=4, threshold=1.0), QCFS(levels=4, threshold=1.0)

    def forward(self, x):
        a, b = self.q1(self.fc1(x)), self.q2(self.fc2(x))
        return self.out(torch.mul(a, b)) + torch.sign(a - 0.5).sum(dim=1, keepdim=True)


def test_a_new_kind_and_a_two_input_operation_plug_in_through_the_registry(toy_rules):
    torch.manual_seed(0)
    model = TwoBranches().eval()
    x = torch.randn(7, 6)
    with pytest.raises(ConversionError):  # without the toy rules nothing claims sign and mul
        for rule in toy_rules:
            rules.unregister(rule.name)
        try:
            convert(model)
        finally:
            for rule in toy_rules:
                rules.register(rule)
    network = convert(model)
    kinds = {type(module).__name__ for module in network.graph_module.modules()}
    assert {"SignNeuron", "PairProduct", "IFNeuron"} <= kinds
    # at T = L the IF neurons equal QCFS, so the parallel network equals the ANN exactly
    assert torch.equal(parallel_forward(network, x, time_steps=4), model(x))
    # the serial form feeds both inputs to the product, step by step; its time average
    # equals the parallel product up to float rounding of the accumulated pair products
    torch.testing.assert_close(serial_forward(network, x, time_steps=4), model(x), rtol=1e-5, atol=1e-5)
    # the toy neuron's spikes are counted by the simulator with no edit there
    counts = serial_simulation(network, x, time_steps=4).spike_counts
    assert any(name.startswith("sign") for name in counts)
    # and the product's registered cost reaches the energy estimate
    costs = layer_costs(network, x, time_steps=4)
    assert any(cost.elementwise == 5 for cost in costs.values())


def test_rules_are_tried_newest_first_and_names_are_unique(toy_rules):
    assert rules.rules()[0].name == "toy product"
    with pytest.raises(ValueError, match="already registered"):
        rules.register(toy_rules[0])
    with pytest.raises(KeyError, match="no conversion rule"):
        rules.unregister("no such rule")


def test_unconvertible_operations_are_grouped_by_type_with_counts():
    class Unclaimed(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = QCFS(levels=2, threshold=1.0)

        def forward(self, x):
            x = self.q(x)  # spike-coded from here on
            return torch.cumsum(x, 1) + torch.cumsum(x, 1) + torch.cumsum(x, 1) + torch.sort(x, 1).values

    with pytest.raises(ConversionError) as error:
        convert(Unclaimed())
    message = str(error.value)
    assert "4 operations" in message and "2 types" in message
    assert "3 × function torch.cumsum" in message
    assert "1 × function torch.sort" in message
    assert "register a rule" in message


def test_shape_checks_are_static_and_run_unchanged():
    class Checked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.q = nn.Linear(4, 4), QCFS(levels=2, threshold=1.0)

        def forward(self, x):
            torch._assert(x.dim() == 2, "expected (B, 4)")
            return self.q(self.fc(x)).view(x.size(0), -1)

    model = Checked().eval()
    x = torch.randn(3, 4)
    assert torch.equal(parallel_forward(convert(model), x, time_steps=2), model(x))


def test_relu6_converts_with_its_ceiling():
    class Mobile(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(F.relu6(self.fc1(x) * 10))

    torch.manual_seed(0)
    model = Mobile().eval()
    data = [torch.randn(64, 4)]
    network = convert(model, calibration_data=data)
    neurons = dict(network.neurons())
    assert len(neurons) == 1
    threshold = float(next(iter(neurons.values())).threshold)
    assert 0 < threshold <= 6.0  # the recorded range (about 10·|x|) is capped at ReLU6's ceiling


def test_stochastic_depth_in_eval_is_the_identity_and_disappears():
    ops = pytest.importorskip("torchvision.ops")

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.q = nn.Linear(4, 4), QCFS(levels=2, threshold=1.0)

        def forward(self, x):
            return x + ops.stochastic_depth(self.q(self.fc(x)), 0.5, "row", self.training)

    model = Residual().eval()
    x = torch.randn(3, 4)
    network = convert(model)
    assert not any("stochastic_depth" in str(node.target) for node in network.graph_module.graph.nodes)
    assert torch.equal(parallel_forward(network, x, time_steps=2), model(x))


def test_operations_on_analog_values_before_any_neuron_run_unchanged():
    """Before the first activation site values are constant over time: any operation on
    them (a mask, a sort) is computed exactly in both forms and needs no rule."""
    class MaskedInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.q = nn.Linear(4, 4), QCFS(levels=2, threshold=1.0)

        def forward(self, x, mask):
            weights = torch.sort(mask, dim=1).values / mask.sum(dim=1, keepdim=True)
            return self.q(self.fc(x * weights)) / mask.sum(dim=1, keepdim=True)

    model = MaskedInput().eval()
    x, mask = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    network = convert(model)
    assert torch.equal(parallel_forward(network, x, mask, time_steps=2), model(x, mask))
    torch.testing.assert_close(serial_forward(network, x, mask, time_steps=2), model(x, mask))


def test_a_fitted_rule_builds_from_data_and_rebuilds_from_its_skeleton_without():
    """A fitted kind from this file: ``fit`` sees the recorded inputs, ``skeleton`` the same
    shapes without data (what loading a saved network uses); a fitted rule registered
    without a skeleton is refused by name when a network must be rebuilt without data."""
    seen = []

    def fit(gm, node, samples, config):
        seen.append(samples.numel())
        return SignNeuron()

    model = nn.Sequential(nn.Linear(6, 5), QCFS(levels=4, threshold=1.0), nn.Softsign(), nn.Linear(5, 3)).eval()
    data = [(torch.randn(8, 6),)]
    rule = rules.register(rules.module_rule("toy softsign", (nn.Softsign,), rules.Role.FITTED, fit=fit,
                                            skeleton=lambda gm, node, config: SignNeuron()))
    try:
        network = convert(model, calibration_data=data)
        assert seen and seen[0] > 0 and isinstance(network.graph_module.get_submodule("2"), SignNeuron)
        rebuilt = convert(model, calibration_data=None, placeholder_fits=True)
        assert isinstance(rebuilt.graph_module.get_submodule("2"), SignNeuron) and len(seen) == 1
    finally:
        rules.unregister(rule.name)
    rule = rules.register(rules.module_rule("toy softsign", (nn.Softsign,), rules.Role.FITTED, fit=fit))
    try:
        with pytest.raises(ConversionError, match="toy softsign.*no skeleton"):
            convert(model, calibration_data=None, placeholder_fits=True)
    finally:
        rules.unregister(rule.name)
