"""parasnn.save / parasnn.load: safetensors + JSON, no pickled code, bit-exact in a fresh
process that has never seen the ANN's class; torch.export of a converted network."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import parasnn
from parasnn.calibration.pipeline import CalibrationConfig
from parasnn.conversion.methods import Method, neuron_factory
from parasnn.datasets.data import load_dataset
from parasnn.io.module_config import NetworkFileError
from parasnn.io.portable import GRAPH_FILE, WEIGHTS_FILE
from parasnn.neurons.pmsm import PolarityQuantizer

SRC = str(Path(parasnn.__file__).resolve().parent.parent)


class CustomNet(nn.Module):
    """Defined only here: the fresh process cannot import it. Functional ReLU and max-pool,
    a view, a residual addition, scaling by a constant and a module called in two places."""

    def __init__(self, channels=4, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels * 4 * 4, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.act(x + 0.5 * self.conv2(x))
        x = F.max_pool2d(self.act(x), 2)
        return self.fc(x.reshape(x.size(0), -1))


def _digits(count=256, batch=64):
    splits = load_dataset("digits")
    images, labels = splits.train.tensors
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, count, batch)]


def _fresh_process_outputs(directory: Path, inputs: torch.Tensor, time_steps: int) -> torch.Tensor:
    """Load ``directory`` in a new interpreter (no test code importable) and run it."""
    save_file({"x": inputs.contiguous()}, str(directory / "inputs.safetensors"))
    script = (
        "import sys, torch, parasnn\n"
        "from safetensors.torch import load_file, save_file\n"
        "assert 'test_portable' not in sys.modules\n"
        f"network = parasnn.load({str(directory)!r})\n"
        f"x = load_file({str(directory / 'inputs.safetensors')!r})['x']\n"
        "with torch.no_grad():\n"
        f"    y = network(x, time_steps={time_steps})\n"
        f"save_file({{'y': y.contiguous()}}, {str(directory / 'outputs.safetensors')!r})\n")
    environment = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run([sys.executable, "-c", script], cwd=directory, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return load_file(str(directory / "outputs.safetensors"))["y"]


def _check_round_trip(network, tmp_path, inputs, time_steps):
    parasnn.save(network, tmp_path / "net")
    with torch.no_grad():
        expected = network(inputs, time_steps=time_steps)
    assert torch.equal(_fresh_process_outputs(tmp_path / "net", inputs, time_steps), expected)
    loaded = parasnn.load(tmp_path / "net")
    state, loaded_state = network.state_dict(), loaded.state_dict()
    assert set(state) == set(loaded_state)
    for name, value in state.items():
        if isinstance(value, torch.Tensor):  # extra state (levels) is a dict
            assert value.dtype == loaded_state[name].dtype and torch.equal(value, loaded_state[name]), name
        else:
            assert value == loaded_state[name], name
    return loaded


def test_custom_relu_network_round_trips_bit_exactly_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    batches = _digits()
    network = parasnn.convert(CustomNet().eval(), calibration_data=[x for x, _ in batches])
    x = batches[0][0][:16]
    loaded = _check_round_trip(network, tmp_path, x, time_steps=3)
    # Also in this process, for the serial form and another T.
    assert torch.equal(parasnn.serial_forward(loaded, x, time_steps=5), parasnn.serial_forward(network, x, time_steps=5))
    assert loaded.source == "CustomNet" and loaded.config == network.config
    # No pickled code: the graph description is plain JSON naming only allow-listed things.
    description = json.loads((tmp_path / "net" / GRAPH_FILE).read_text())
    assert {entry["class"] for entry in description["modules"].values()} >= {"torch.nn.Conv2d", "parasnn.IFNeuron",
                                                                             "parasnn.RateMaxPool"}


def test_calibrated_network_round_trips_bit_exactly(tmp_path):
    torch.manual_seed(1)
    batches = _digits(count=192, batch=32)
    config = CalibrationConfig(time_steps=2, batch_size=32, validation_fraction=0.0, bn_epochs=1, bias_epochs=1,
                               validation_interval=2, revert_if_worse=False)
    network = parasnn.calibrate(CustomNet().eval(), batches, config=config)
    calibrated = [neuron for _, neuron in network.neurons() if neuron.pre_shift.dim() or neuron.temporal_bias.dim()]
    assert calibrated, "the calibration must have left per-channel terms to round-trip"
    _check_round_trip(network, tmp_path, batches[0][0][:8], time_steps=2)


def test_pmsm_network_in_float64_round_trips_bit_exactly(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), PolarityQuantizer(levels=2, negative_levels=3),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(27, 4)).eval()
    network = parasnn.convert(model, neuron=neuron_factory(Method.PMSM)).double()
    loaded = _check_round_trip(network, tmp_path, torch.randn(5, 1, 8, 8, dtype=torch.float64), time_steps=2)
    neuron = dict(loaded.neurons())["2"]
    assert (neuron.positive_levels, neuron.negative_levels) == (2, 3)


def test_unknown_class_function_and_corrupt_files_are_refused_with_reasons(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return x

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    network = parasnn.convert(model, calibration_data=[torch.randn(8, 4)])
    network.graph_module.add_submodule("odd", Odd())
    graph = network.graph_module.graph
    with graph.inserting_before(list(graph.nodes)[-1]):
        graph.call_module("odd", (list(graph.nodes)[-2],))
    with pytest.raises(NetworkFileError, match="'odd'.*allow-list"):
        parasnn.save(network, tmp_path / "odd")

    network = parasnn.convert(model, calibration_data=[torch.randn(8, 4)])
    directory = parasnn.save(network, tmp_path / "net")
    weights = (directory / WEIGHTS_FILE).read_bytes()
    (directory / WEIGHTS_FILE).write_bytes(weights[:-10])
    with pytest.raises(NetworkFileError, match="checksum"):
        parasnn.load(directory)
    (directory / WEIGHTS_FILE).write_bytes(weights)

    text = (directory / GRAPH_FILE).read_text()
    (directory / GRAPH_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(NetworkFileError, match="not valid JSON"):
        parasnn.load(directory)
    for old, new, message in [('"parasnn.IFNeuron"', '"os.system"', "allow-list"),
                              ('"torch.nn.Linear"', '"torch.nn.Bilinear"', "allow-list"),
                              ('"call_module"', '"call_python"', "unknown operation")]:
        (directory / GRAPH_FILE).write_text(text.replace(old, new, 1))
        with pytest.raises(NetworkFileError, match=message):
            parasnn.load(directory)
    description = json.loads(text)
    description["graph"].insert(1, {"name": "evil", "op": "call_function", "target": "torch.load",
                                    "args": {"tuple": ["x.pt"]}, "kwargs": {}})
    (directory / GRAPH_FILE).write_text(json.dumps(description))
    with pytest.raises(NetworkFileError, match="torch.load.*ALLOWED_FUNCTIONS"):
        parasnn.load(directory)
    description["graph"][1] = {"name": "evil", "op": "call_method", "target": "__reduce_ex__",
                               "args": {"tuple": []}, "kwargs": {}}
    (directory / GRAPH_FILE).write_text(json.dumps(description))
    with pytest.raises(NetworkFileError, match="not a tensor method"):
        parasnn.load(directory)
    with pytest.raises(NetworkFileError, match="not a directory"):
        parasnn.load(tmp_path / "missing")


def test_torch_export_of_a_converted_network_matches_it():
    class AtFourSteps(nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, x):
            return self.network(x, time_steps=4)

    torch.manual_seed(3)
    network = parasnn.convert(CustomNet().eval(), calibration_data=[torch.randn(16, 1, 8, 8)])
    x = torch.randn(2, 1, 8, 8)
    exported = torch.export.export(AtFourSteps(network), (x,))
    with torch.no_grad():
        assert torch.equal(exported.module()(x), network(x, time_steps=4))
    with pytest.raises(ValueError, match="NaN or infinite"):  # the eager check is still there
        network(torch.full((1, 1, 8, 8), float("nan")), time_steps=4)


def test_pascal_and_qcfs_layers_round_trip(tmp_path):
    from parasnn.neurons import QCFS
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), QCFS(levels=3, threshold=1.5), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Dropout(0.2), nn.Linear(12, 4)).eval()
    x = torch.randn(2, 1, 8, 8)
    for method in (Method.FS_PC, Method.PASCAL):
        network = parasnn.convert(model, neuron=neuron_factory(method))
        loaded = parasnn.load(parasnn.save(network, tmp_path / method.value))
        with torch.no_grad():
            assert torch.equal(loaded(x, time_steps=3), network(x, time_steps=3))
            if method is Method.FS_PC:  # the neuron's L travels: at T = 2L it is still the ANN
                assert torch.equal(loaded(x, time_steps=6), model(x))
        assert [type(n) for _, n in loaded.neurons()] == [type(n) for _, n in network.neurons()]
