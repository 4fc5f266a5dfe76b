"""The converter: any nn.Module through torch.fx, exactness at T = L, clear errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import LargestTensor
from parasnn.conversion.stages import BatchNormMode, ConversionConfig, RateMaxPool, convert, quantize_relus
from parasnn.conversion.graph import ConversionError
from parasnn.neurons import QCFS
from parasnn.simulation.forms import (parallel_forward, serial_forward, serial_outputs, serial_step, spike_counts,
                                     spike_trains)


def _randomise_batchnorm(model):
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
    return model


class FunctionalNet(nn.Module):
    """ReLUs written three functional ways, a residual add, F.max_pool2d, flatten, dropout."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.conv2(x))
        y = (self.conv3(y) + x).relu()
        y = F.max_pool2d(y, 2)
        return self.fc(self.dropout(torch.flatten(y, 1)))


class QCFSNet(nn.Module):
    def __init__(self, levels=4):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), QCFS(levels=levels,
                                                                                                 threshold=1.5)
        self.conv2, self.bn2, self.act2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), QCFS(levels=levels,
                                                                                                 threshold=2.0)
        self.pool = nn.AvgPool2d(2)
        self.act3 = QCFS(levels=levels, threshold=1.0)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)) + x)
        return self.fc(torch.flatten(self.act3(self.pool(x)), 1))


def test_qcfs_network_at_t_equal_l_is_bit_equal_and_input_untouched():
    torch.manual_seed(0)
    model = _randomise_batchnorm(QCFSNet(levels=4)).eval()
    before = copy.deepcopy(model.state_dict())
    network = convert(model)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(parallel_forward(network, x, time_steps=4), model(x))
    # The argument is not mutated: same modules, same tensors.
    assert all(isinstance(m, QCFS) for m in (model.act1, model.act2, model.act3))
    assert all(torch.equal(before[k], v) if torch.is_tensor(v) else before[k] == v
               for k, v in model.state_dict().items())
    assert sorted(name for name, _ in network.neurons()) == ["act1", "act2", "act3"]


def test_every_relu_spelling_converts_with_calibration_data():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    data = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    network = convert(model, calibration_data=data)
    assert len(list(network.neurons())) == 3
    assert any(isinstance(m, RateMaxPool) for m in network.modules())
    out = parallel_forward(network, data[0], time_steps=8)
    assert out.shape == (16, 5)
    assert serial_forward(network, data[0], time_steps=8).shape == (16, 5)


def test_quantized_relu_network_is_its_own_qcfs_proxy_at_t_equal_l():
    # ReLU → QCFS (recorded θ) → IF: the parallel SNN at T = L equals the QCFS proxy ANN.
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    data = [torch.randn(16, 1, 8, 8)]
    proxy = quantize_relus(model, data, levels=4)
    network = convert(proxy)
    with torch.no_grad():
        assert torch.equal(network(data[0], time_steps=4), proxy(data[0]))


def test_relu_without_calibration_data_names_the_relus():
    with pytest.raises(ConversionError, match=r"relu.*calibration_data"):
        convert(FunctionalNet())


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.GroupNorm(2, 4)
        self.quantizer = QCFS(levels=2, threshold=1.0)

    def forward(self, x):
        x = self.quantizer(x)  # spike-coded from here on: analog values before it need no rule
        y = torch.cumsum(self.fc(x), 1)
        return self.norm(y) // x  # an integer division of two activations


def test_unsupported_operations_are_all_listed_by_name_and_type():
    with pytest.raises(ConversionError) as error:
        convert(Unsupported())
    message = str(error.value)
    assert "3 operations" in message
    assert "torch.cumsum" in message or "cumsum" in message
    assert "'norm' (torch.nn.modules.normalization.GroupNorm)" in message
    assert "node 'floordiv'" in message


def test_untraceable_model_gives_conversion_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ConversionError, match="could not trace DataDependent"):
        convert(DataDependent())


def test_one_relu_module_called_twice_becomes_two_neurons():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.relu = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU(inplace=True)

        def forward(self, x):
            return self.fc2(self.relu(self.fc2(self.relu(self.fc1(x)))))

    data = [torch.randn(8, 4) * 3]
    network = convert(Shared(), calibration_data=data)
    neurons = dict(network.neurons())
    assert len(neurons) == 2 and len({id(n) for n in neurons.values()}) == 2


def test_torchvision_resnet18_converts_and_runs_both_forms():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    data = [torch.randn(2, 3, 32, 32)]
    network = convert(model, calibration_data=data)
    assert len(list(network.neurons())) == 17  # stem + 2 per block × 8 blocks
    assert isinstance(network.graph_module.get_submodule("maxpool"), RateMaxPool)
    assert parallel_forward(network, data[0], time_steps=4).shape == (2, 10)
    assert serial_outputs(network, data[0], time_steps=2).shape == (2, 2, 10)


def test_batchnorm_folding_removes_bn_and_keeps_outputs_close():
    torch.manual_seed(0)
    model = _randomise_batchnorm(QCFSNet(levels=4)).eval()
    kept = convert(model)
    folded = convert(model, config=ConversionConfig(batchnorm=BatchNormMode.FOLD))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        a, b = kept(x, time_steps=64), folded(x, time_steps=64)
    # Folding changes the last bits of the pre-activations; a level on a rounding boundary can
    # flip, which moves a logit by about |w|·θ/T. The bulk must agree.
    assert (a - b).abs().median() < 1e-4
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.9


def test_serial_and_parallel_agree_for_a_single_layer_with_constant_input():
    # One neuron layer fed by the (constant) input: serial IF == parallel count (docs/maths.md §3).
    model = nn.Sequential(nn.Linear(6, 6), QCFS(levels=8, threshold=1.0), nn.Linear(6, 3))
    network = convert(model)
    x = torch.randn(50, 6)
    for steps in (1, 3, 8):
        assert torch.allclose(serial_forward(network, x, time_steps=steps),
                              parallel_forward(network, x, time_steps=steps), atol=1e-5)


def test_serial_state_is_explicit():
    model = nn.Sequential(nn.Linear(3, 3), QCFS(levels=4, threshold=1.0))
    network = convert(model)
    x = torch.randn(4, 3)
    states, first = serial_step(network, {}, x, time_steps=4)
    again_states, again = serial_step(network, {}, x, time_steps=4)
    assert torch.equal(first, again)  # same state in, same output out: nothing hidden
    _, second = serial_step(network, states, x, time_steps=4)
    assert set(states) == {"1"}
    # the state is the membrane potential: the second step from it is the IF neuron's
    # second step, computed here by hand (θ = 1: fire when v + I ≥ 1, spikes of amplitude 1)
    current = network.graph_module.get_submodule("0")(x)
    assert torch.equal(second, ((states["1"] + current) >= 1.0).to(current.dtype))
    # the first step starts from v₀ = θ/2
    assert torch.equal(first, ((current + 0.5) >= 1.0).to(current.dtype))


def test_rate_max_pool_serial_average_equals_parallel():
    pool = RateMaxPool(nn.MaxPool2d(2))
    spikes = (torch.rand(8, 2, 3, 4, 4) > 0.6).float()  # (T, B, C, H, W)
    state = pool.initial_state(spikes[0], time_steps=8)
    outputs = []
    for current in spikes:
        state, out = pool.step(state, current, time_steps=8)
        outputs.append(out)
    outputs = torch.stack(outputs)
    assert set(outputs.unique().tolist()) <= {0.0, 1.0}  # spikes in, spikes out
    assert torch.equal(outputs.sum(0), pool(spikes.sum(0)))


def test_parallel_memory_does_not_grow_with_time_steps():
    network = convert(_randomise_batchnorm(QCFSNet()).eval())
    x = torch.randn(4, 1, 8, 8)
    sizes = []
    for steps in (1, 64, 4096):
        with torch.no_grad(), LargestTensor() as meter:
            network(x, time_steps=steps)
        sizes.append(meter.largest)
    assert sizes[0] == sizes[1] == sizes[2]


def test_spike_trains_are_materialised_on_demand_and_match_counts():
    network = convert(_randomise_batchnorm(QCFSNet()).eval())
    x = torch.randn(4, 1, 8, 8)
    trains = spike_trains(network, x, time_steps=6, layers=["act2"])
    assert list(trains) == ["act2"] and trains["act2"].shape == (6, 4, 6, 8, 8)
    # a train is the count laid out in time: summing it over T gives the parallel spike count
    assert torch.equal(trains["act2"].sum(0), spike_counts(network, x, time_steps=6)["act2"])
    with pytest.raises(KeyError, match="no neuron layer"):
        spike_trains(network, x, time_steps=6, layers=["nope"])


def test_bad_inputs_are_rejected_clearly():
    network = convert(nn.Sequential(nn.Linear(3, 3), QCFS(levels=4)))
    with pytest.raises(ValueError, match="NaN"):
        network(torch.tensor([[float("nan"), 0.0, 0.0]]), time_steps=2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="time_steps"):
            network(torch.zeros(1, 3), time_steps=bad)
    with pytest.raises(ConversionError, match="calibration data is empty"):
        convert(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), calibration_data=[])


def test_qcfs_network_beyond_t_equal_l_keeps_its_levels_bit_equal_fused_too():
    # docs/maths.md §3a: every neuron keeps L levels at T > L, so the SNN is the ANN at every T ≥ L.
    from parasnn.simulation.compiled import fuse
    torch.manual_seed(0)
    model = _randomise_batchnorm(QCFSNet(levels=4)).eval()
    network = convert(model)
    fused = fuse(network)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        for steps in (5, 8, 12, 64):
            assert torch.equal(parallel_forward(network, x, time_steps=steps), expected)
            assert torch.equal(fused(x, time_steps=steps), expected)
    # keep_levels=False: T levels, the finer grid the network was not trained on.
    finer = convert(model, config=ConversionConfig(keep_levels=False))
    assert all(n.levels is None for _, n in finer.neurons())
    with torch.no_grad():
        assert not torch.equal(parallel_forward(finer, x, time_steps=8), expected)
        assert torch.equal(parallel_forward(finer, x, time_steps=4), expected)


def test_serial_network_keeping_levels_agrees_with_parallel_for_constant_input():
    model = nn.Sequential(nn.Linear(6, 6), QCFS(levels=4, threshold=1.0), nn.Linear(6, 3))
    network = convert(model)
    x = torch.randn(50, 6)
    for steps in (8, 12, 16):
        assert torch.allclose(serial_forward(network, x, time_steps=steps),
                              parallel_forward(network, x, time_steps=steps), atol=1e-5)


def test_relu_stand_ins_get_t_levels_and_keep_levels_is_recorded():
    torch.manual_seed(0)
    data = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    network = convert(FunctionalNet().eval(), calibration_data=data)
    assert all(n.levels is None for _, n in network.neurons())
    assert ConversionConfig.from_dict(ConversionConfig().to_dict()).keep_levels is True
    old = {k: v for k, v in ConversionConfig().to_dict().items() if k != "keep_levels"}
    assert ConversionConfig.from_dict(old).keep_levels is False  # checkpoints converted before the option


def test_serial_network_keeping_levels_at_t_equal_k_l_is_the_serial_network_at_t_equal_l():
    # docs/maths.md §3a: at T = k·L a neuron fires only every k-th step, fed the sum of k steps.
    torch.manual_seed(0)
    model = _randomise_batchnorm(QCFSNet(levels=4)).eval()
    network = convert(model)
    x = torch.randn(16, 1, 8, 8)
    at_l = serial_forward(network, x, time_steps=4)
    for steps in (8, 12):
        assert torch.allclose(serial_forward(network, x, time_steps=steps), at_l, atol=1e-5)
