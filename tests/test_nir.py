"""NIR export/import: export → nir.write → nir.read → parasnn is bit-exact (parallel and serial),
what NIR cannot express is refused by name, and a third-party consumer (Norse) runs the file."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import parasnn
from parasnn.io.nir import NIRError, from_nir, read_nir, to_nir, write_nir

nir = pytest.importorskip("nir")


class Block(nn.Module):
    """Conv-BN-ReLU twice with a residual sum, scaling by constants, max-pool, flatten."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(x + self.conv2(x) / 3.0)
        x = self.pool(self.relu3(0.5 * x))
        return self.fc(x.reshape(x.size(0), -1))


def _randomise(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
    return model.eval()


def _same_everywhere(network, loaded, x):
    with torch.no_grad():
        for time_steps in (1, 3, 8):
            assert torch.equal(loaded(x, time_steps=time_steps), network(x, time_steps=time_steps))
        assert torch.equal(parasnn.serial_forward(loaded, x, time_steps=4),
                           parasnn.serial_forward(network, x, time_steps=4))


def test_round_trip_through_a_nir_file_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    network = parasnn.convert(_randomise(Block()), calibration_data=[torch.randn(32, 1, 8, 8)])
    with pytest.raises(NIRError, match="'pool'.*max-pooling: NIR has none"):
        to_nir(network, (1, 8, 8))
    path = write_nir(network, tmp_path / "net.nir", (1, 8, 8), max_pool="sum-pool")
    graph = nir.read(path)  # nir's own reader, with its type checks
    assert {type(node).__name__ for node in graph.nodes.values()} >= {"Conv2d", "IF", "Scale", "SumPool2d",
                                                                      "Flatten", "Affine", "Input", "Output"}
    _same_everywhere(network, from_nir(graph), torch.randn(6, 1, 8, 8))
    # The NIR IF carries the closest hard-reset reading of our neuron: first spike at θ − ψ, reset to −ψ.
    neuron = network.graph_module.relu1
    node = graph.nodes["relu1"]
    assert np.allclose(node.v_threshold, float(neuron.threshold - neuron.shift))
    assert np.allclose(node.v_reset, -float(neuron.shift)) and np.all(node.r == 1)


def test_calibrated_terms_adaptive_pooling_batchnorm1d_and_folded_amplitudes_round_trip(tmp_path):
    torch.manual_seed(1)
    model = _randomise(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                     nn.Flatten(), nn.Linear(12, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(),
                                     nn.Dropout(0.3), nn.Linear(6, 4)), seed=1)
    network = parasnn.convert(model, calibration_data=[torch.randn(32, 2, 8, 8)])
    # Calibration terms as parasnn.calibrate leaves them: per-channel ψ_DA, Δb and θ_post.
    first = network.graph_module.get_submodule("2")
    first.pre_shift = torch.randn(3) * 0.05
    first.temporal_bias = nn.Parameter(torch.rand(3) * 0.1)
    first.amplitude = first.threshold + torch.randn(3) * 0.01
    for amplitudes in ("scale", "fold"):
        if amplitudes == "fold":  # folding needs one amplitude per layer
            first.amplitude = first.threshold.clone()
        graph = to_nir(network, (2, 8, 8), amplitudes=amplitudes)
        nir.write(tmp_path / f"{amplitudes}.nir", graph)
        _same_everywhere(network, read_nir(tmp_path / f"{amplitudes}.nir"), torch.randn(5, 2, 8, 8))
    # Other tools see ψ_DA as part of the bias of the layer before the neuron (BN as a 1×1 conv).
    bn = network.graph_module.get_submodule("1")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    visible = torch.as_tensor(graph.nodes["_1"].bias)
    assert torch.allclose(visible, (bn.bias - bn.running_mean * scale + first.pre_shift).detach(), atol=1e-6)
    # ... and, with amplitudes folded, the spike value θ_post in the next layer's weights.
    assert "_2_amplitude" not in graph.nodes
    assert torch.allclose(torch.as_tensor(graph.nodes["_5"].weight),
                          network.graph_module.get_submodule("5").weight.detach() * float(first.amplitude))


def test_operations_nir_cannot_express_are_listed_by_name():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.pool = nn.AvgPool2d(2, ceil_mode=True)

        def forward(self, x):
            y = torch.relu(self.fc(x))
            return torch.cat([y, y - 1.0], dim=1)

    network = parasnn.convert(Odd().eval(), calibration_data=[torch.randn(8, 4)])
    with pytest.raises(NIRError, match=r"(?s)2 operation\(s\).*'sub' \(sub\).*'cat' \(cat\)"):
        to_nir(network, (4,))


def test_an_if_neuron_from_another_tool_is_read_as_threshold_minus_reset():
    weight = np.eye(3, dtype=np.float32)
    graph = nir.NIRGraph.from_list(
        nir.Input(input_type=np.array([3])), nir.Affine(weight=weight, bias=np.zeros(3, np.float32)),
        nir.IF(r=np.ones(3, np.float32), v_threshold=np.full(3, 0.75, np.float32),
               v_reset=np.full(3, -0.25, np.float32)),
        nir.Output(output_type=np.array([3])))
    network = from_nir(graph)
    (_, neuron), = network.neurons()
    assert torch.equal(neuron.threshold, torch.full((3,), 1.0)) and torch.equal(neuron.shift, torch.full((3,), 0.25))
    with pytest.raises(NIRError, match="LIF has no parasnn counterpart"):
        from_nir(nir.NIRGraph.from_list(nir.Input(input_type=np.array([3])),
                                        nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3),
                                                v_threshold=np.ones(3)),
                                        nir.Output(output_type=np.array([3]))))


def _nir_if_reference(network_graph, x, time_steps, *, v_reset_zero):
    """NIR's IF as its definition reads (v ← v + I, spike when v > v_threshold, then v ← v_reset),
    run on the file's Affine/IF chain with a constant input; returns the time-averaged output."""
    names = [name for name in ("_0", "_1", "_2")]
    affine0, neuron, affine2 = (network_graph.nodes[name] for name in names)
    w0, b0 = torch.as_tensor(affine0.weight), torch.as_tensor(affine0.bias)
    w2, b2 = torch.as_tensor(affine2.weight), torch.as_tensor(affine2.bias)
    threshold = torch.as_tensor(neuron.v_threshold)
    reset = torch.zeros_like(threshold) if v_reset_zero else torch.as_tensor(neuron.v_reset)
    v = torch.zeros(x.shape[0], threshold.shape[0])
    outputs = []
    for _ in range(time_steps):
        v = v + (x @ w0.T + b0)
        z = (v - threshold > 0).float()
        v = (1 - z) * v + z * reset
        outputs.append(z @ w2.T + b2)
    return torch.stack(outputs).mean(0)


def test_norse_runs_the_exported_file_as_nir_defines_if_without_our_reset(tmp_path):
    norse = pytest.importorskip("norse.torch")
    from parasnn.datasets.data import load_dataset
    torch.manual_seed(0)
    images = load_dataset("digits").train.tensors[0][:256].reshape(256, -1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    network = parasnn.convert(model, calibration_data=[images])
    # Norse 1.1 imports no Scale node: fold the spike amplitude into the next layer's weights.
    path = write_nir(network, tmp_path / "mlp.nir", (64,), amplitudes="fold")
    graph = nir.read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        consumer = norse.from_nir(graph)
    x, time_steps = images[:64], 8
    state, outputs = None, []
    with torch.no_grad():
        for _ in range(time_steps):
            output, state = consumer(x, state)
            outputs.append(output)
    theirs = torch.stack(outputs).mean(0)
    # Norse follows NIR's IF (strict threshold, hard reset) but resets to 0 whatever v_reset says.
    assert torch.allclose(theirs, _nir_if_reference(graph, x, time_steps, v_reset_zero=True), atol=1e-5)
    # Ours resets by subtraction and starts at θ/2: the same first spikes, different later ones.
    ours = parasnn.serial_forward(network, x, time_steps=time_steps)
    assert not torch.allclose(theirs, ours, atol=1e-3)


def test_export_command_writes_nir_and_portable_directories(tmp_path, capsys):
    from parasnn.cli.main import main
    torch.manual_seed(2)
    network = parasnn.convert(_randomise(Block()), calibration_data=[torch.randn(16, 1, 8, 8)])
    parasnn.save(network, tmp_path / "net", input_shape=(1, 8, 8))
    assert main(["export", str(tmp_path / "net"), "--format", "nir", "--out", str(tmp_path / "net.nir")]) == 2
    assert "max-pooling: NIR has none" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "net"), "--format", "nir", "--out", str(tmp_path / "net.nir"),
                 "--max-pool", "sum-pool"]) == 0
    _same_everywhere(network, read_nir(tmp_path / "net.nir"), torch.randn(3, 1, 8, 8))
    assert main(["export", str(tmp_path / "net"), "--format", "parasnn", "--out", str(tmp_path / "copy")]) == 0
    _same_everywhere(network, parasnn.load(tmp_path / "copy"), torch.randn(3, 1, 8, 8))
