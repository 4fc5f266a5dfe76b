"""PASCAL ([PASCAL], docs/maths.md §5): the serial SNN reproduces the QCFS ANN exactly; its schedule
and effective latency T_eff; the CLI route."""
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from parasnn.io.checkpoint import load_snn, save_ann, save_snn
from parasnn.conversion.stages import convert
from parasnn.conversion.methods import Method, neuron_factory
from parasnn.zoo.models import ActivationSpec, ModelSpec, build_model
from parasnn.neurons.pascal import (PascalNeuron, PipelinedOnlyError, accumulate, correction_steps,
                                    emission_train, membrane_charge, pascal_step, soft_reset_step,
                                    sufficient_correction_steps)
from parasnn.neurons.qcfs import QCFS, qcfs_level
from parasnn.methods.pascal import compare_with_ann, effective_latency, pascal_simulation, schedule
from parasnn.methods.pascal_evaluation import evaluate_pascal
from parasnn.simulation.forms import parallel_forward, parallel_simulation, serial_forward

levels_strategy = st.integers(min_value=1, max_value=9)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


# -- one layer ------------------------------------------------------------------------------------

@given(levels_strategy, st.floats(min_value=0.05, max_value=20.0), st.integers(min_value=1, max_value=8), seeds)
def test_layer_count_and_output_equal_qcfs_bit_for_bit(levels, threshold, input_steps, seed):
    """Any float32 pre-activation, any way the input arrives over T_in steps: after the paper's
    correction steps the count is the QCFS level and the value sent is QCFS's output."""
    generator = torch.Generator().manual_seed(seed)
    quantizer = QCFS(levels=levels, threshold=threshold).eval()
    neuron = PascalNeuron.from_qcfs(quantizer)
    scale = 1.5 * threshold
    # Cumulative input after each step; the last one is the layer's pre-activation z.
    cumulative = (torch.rand(input_steps, 64, generator=generator) * 2 - 0.7) * scale
    z = cumulative[-1]
    result = neuron.accumulate(neuron.charge(cumulative),
                               correction=correction_steps(input_steps=input_steps, output_steps=levels),
                               keep_spikes=True)
    with torch.no_grad():
        expected = quantizer(z)
    assert torch.equal(result.count, qcfs_level(z, threshold=quantizer.effective_threshold().detach(),
                                                 levels=levels, shift=quantizer.shift().detach()))
    assert torch.equal(neuron.emitted_value(result.count), expected)
    assert torch.equal(neuron(z, time_steps=3), expected)  # parallel form = QCFS, whatever T is passed
    # Net count = positive − negative spikes, within 0..L at every step.
    running = result.spikes.cumsum(0)
    assert torch.equal(result.positive - result.negative, result.count)
    assert bool((running >= 0).all() and (running <= levels).all())
    # T_l − 1 correction steps already suffice for the clipped rule.
    after_sufficient = running[input_steps - 1 + sufficient_correction_steps(output_steps=levels)]
    assert torch.equal(after_sufficient, result.count)


# Multiples of 1/16 below 2^10 are exact in float64, and so are their sums and the charges below.
grid = st.integers(min_value=-512, max_value=512).map(lambda n: n / 16)


@given(levels_strategy, st.integers(min_value=0, max_value=4), st.lists(st.lists(grid, min_size=6, max_size=6),
                                                                          min_size=1, max_size=8))
def test_ladder_form_equals_textbook_soft_reset_where_arithmetic_is_exact(levels, exponent, currents):
    threshold = 2.0 ** exponent / 4  # θ and ψ = θ/2 on the grid too
    currents = torch.tensor(currents, dtype=torch.float64)  # (T_in, 6): per-step input currents z_t
    correction = correction_steps(input_steps=currents.shape[0], output_steps=levels)
    steps = list(currents) + [torch.zeros(6, dtype=torch.float64)] * correction
    potential = torch.full((6,), threshold / 2, dtype=torch.float64)
    count_reference = torch.zeros(6, dtype=torch.float64)
    count_ladder = torch.zeros(6, dtype=torch.float64)
    total = torch.zeros(6, dtype=torch.float64)
    for current in steps:
        potential, count_reference, spike_reference = soft_reset_step(
            potential, count_reference, levels * current, threshold=threshold, levels=levels)
        total = total + current
        count_ladder, spike_ladder = pascal_step(membrane_charge(total, levels=levels, shift=threshold / 2),
                                                 count_ladder, threshold=threshold, levels=levels)
        assert torch.equal(spike_ladder, spike_reference)
    assert torch.equal(count_ladder, qcfs_level(total, threshold=threshold, levels=levels, shift=threshold / 2))


def test_inhibitory_spikes_undo_early_positive_ones():
    """Input that first overshoots then falls: positive spikes, then negative ones, net = level."""
    threshold, levels = 1.0, 4
    # The accumulated input jumps to 3 (charge 12.5, far above level 4) for two steps, then
    # falls to 0.3 (charge 1.7: level 1). One spike per step at most.
    cumulative = torch.tensor([[3.0], [3.0], [0.3]])
    result = accumulate(membrane_charge(cumulative, levels=levels, shift=0.5), threshold=threshold, levels=levels,
                        correction=correction_steps(input_steps=3, output_steps=levels), keep_spikes=True)
    assert result.spikes[:, 0].tolist() == [1, 1, -1, 0, 0, 0]
    assert (result.positive.item(), result.negative.item(), result.count.item()) == (2, 1, 1)
    assert emission_train(result.count, time_steps=levels)[:, 0].tolist() == [1, 0, 0, 0]


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        PascalNeuron(threshold=1.0, levels=0)
    with pytest.raises(ValueError):
        PascalNeuron(threshold=0.0, levels=2)
    with pytest.raises(TypeError):
        PascalNeuron.from_qcfs(nn.ReLU())
    with pytest.raises(ValueError):
        correction_steps(input_steps=0, output_steps=2)


# -- whole networks -----------------------------------------------------------------------------

class SmallNet(nn.Module):
    """Conv-BN-QCFS, a residual add, a max-pool on spikes, avg-pool, two linear layers."""

    def __init__(self, levels=(4, 4, 4, 4)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(6 * 2 * 2, 12), nn.Linear(12, 5)
        self.acts = nn.ModuleList(QCFS(levels=level, threshold=1.0) for level in levels)

    def forward(self, x):
        x = self.acts[0](self.bn1(self.conv1(x)))
        x = self.acts[1](self.bn2(self.conv2(x)) + x)
        x = F.max_pool2d(x, 2)
        x = self.pool(self.acts[2](self.conv3(x)))
        return self.fc2(self.acts[3](self.fc1(torch.flatten(x, 1))))


def _randomised(levels, seed):
    torch.manual_seed(seed)
    model = SmallNet(levels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(4, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(4, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(4, generator=generator) - 0.5)
        for act in model.acts:
            act.threshold.copy_(torch.rand((), generator=generator) * 2 + 0.25)
    return model.eval()


def _paper_latency(levels):
    """T_eff of a chain (docs/maths.md §5): input at step 1, then C_l + L_l per layer."""
    latency, previous = 1, 1
    for level in levels:
        latency += correction_steps(input_steps=previous, output_steps=level) + level
        previous = level
    return latency


@settings(max_examples=15)
@given(st.tuples(levels_strategy, levels_strategy, levels_strategy, levels_strategy), seeds)
def test_network_reproduces_qcfs_ann_bit_for_bit(levels, seed):
    model = _randomised(levels, seed % 1000)
    network = convert(model, neuron=PascalNeuron.from_qcfs)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x)
    result = pascal_simulation(network, x)
    assert torch.equal(result.output, expected)
    levels_ann = parallel_simulation(network, x, time_steps=1).spike_counts  # = the ANN's QCFS levels
    assert set(result.spike_counts) == set(levels_ann)
    for name, count in result.spike_counts.items():
        assert torch.equal(count, levels_ann[name]), name
    assert result.effective_latency == _paper_latency(levels)
    assert [entry.levels for entry in result.schedule] == list(levels)
    # Each layer integrates exactly the emission window of the layer before it.
    for before, after in zip(result.schedule, result.schedule[1:]):
        assert (after.input_start, after.input_end) == (before.emit_start, before.emit_end)


def test_summing_currents_changes_only_last_bits():
    """``accumulation="currents"`` sums per-step currents: the rounding can move a pre-activation
    that sits on a level boundary, nothing else. Predictions agree, and every count that differs
    belongs to a neuron whose QCFS argument (L·z + ψ)/θ is within 1e-4 of an integer."""
    model = _randomised((3, 5, 2, 4), 7)
    network = convert(model, neuron=PascalNeuron.from_qcfs)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    result = pascal_simulation(network, x, accumulation="currents")
    comparison = compare_with_ann(network, result, expected, x)
    assert comparison["equal_predictions"] == 64
    assert comparison["max_abs_difference"] < 1e-4
    ratios = {}
    hooks = [neuron.register_forward_hook(
        lambda m, args, kwargs, out, name=name: ratios.__setitem__(name, m.charge(args[0]) / m.threshold),
        with_kwargs=True) for name, neuron in network.neurons()]
    parallel_forward(network, x, time_steps=1)
    for hook in hooks:
        hook.remove()
    levels_ann = parallel_simulation(network, x, time_steps=1).spike_counts
    for name, count in result.spike_counts.items():
        differs = count != levels_ann[name]
        near_boundary = (ratios[name] - ratios[name].round()).abs() < 1e-4
        assert bool((~differs | near_boundary).all()), name


def test_summing_currents_is_exact_on_a_dyadic_network():
    """Weights, biases and thresholds on a power-of-two grid: per-step sums are exact, so the
    ``currents`` mode is bit-equal too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), QCFS(levels=4, threshold=2.0), nn.Linear(8, 8),
                          QCFS(levels=2, threshold=1.0), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.weight.copy_(torch.randint(-8, 9, layer.weight.shape) / 8)
            layer.bias.copy_(torch.randint(-8, 9, layer.bias.shape) / 8)
    network = convert(model, neuron=PascalNeuron.from_qcfs)
    x = torch.randint(-16, 17, (32, 6)) / 4
    with torch.no_grad():
        expected = model(x)
    for accumulation in ("inputs", "currents"):
        assert torch.equal(pascal_simulation(network, x, accumulation=accumulation).output, expected)


def test_effective_latency_of_the_zoo_vgg_and_the_sufficient_schedule():
    levels = (2, 4, 8, 4, 2, 2, 4)
    spec = ModelSpec("vgg-small", (1, 28, 28), 10, ActivationSpec(levels=levels, threshold=2.0), width=2)
    network = convert(build_model(spec).eval(), neuron=neuron_factory(Method.PASCAL))
    x = torch.zeros(1, 1, 28, 28)
    entries, latency = schedule(network, x)
    assert latency == _paper_latency(levels) == effective_latency(network, x)
    assert [e.correction for e in entries] == [1, 3, 7, 7, 3, 1, 3]
    assert latency == 1 + sum(e.latency for e in entries)
    sufficient = 1 + sum(2 * level - 1 for level in levels)
    assert effective_latency(network, x, correction="sufficient") == sufficient


def test_residual_blocks_wait_for_both_branches_and_stay_exact():
    """In a ResNet block the add sees the block input (emitted early) and the residual branch
    (emitted later): the neuron after the add integrates over the union of both windows."""
    levels = (5, 5, 4, 1, 4, 5, 2, 3, 3, 2, 4, 1, 5, 2, 3, 4, 2, 5, 3)
    spec = ModelSpec("resnet20", (3, 8, 8), 10, ActivationSpec(levels=levels, threshold=1.0), width=2)
    model = _randomise_all_batchnorms(build_model(spec)).eval()
    network = convert(model, neuron=PascalNeuron.from_qcfs)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    result = pascal_simulation(network, x)
    assert torch.equal(result.output, expected)
    timing = {entry.name: entry for entry in result.schedule}
    stem, act1, act2 = timing["stem.2"], timing["stages.0.0.act1"], timing["stages.0.0.act2"]
    assert (act2.input_start, act2.input_end) == (stem.emit_start, act1.emit_end)
    assert act2.correction == act2.input_steps - 1  # the paper's C = max(T_in, L) − 1 with a long T_in
    sufficient = pascal_simulation(network, x, correction="sufficient")
    assert torch.equal(sufficient.output, expected)  # L − 1 correction steps are enough
    assert sufficient.effective_latency < result.effective_latency


def _randomise_all_batchnorms(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator))
    return model


def test_parallel_form_is_qcfs_and_step_synchronous_simulation_refuses():
    model = _randomised((3, 4, 2, 5), 1)
    network = convert(model, neuron=PascalNeuron.from_qcfs)
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    for time_steps in (1, 4, 7):
        assert torch.equal(parallel_forward(network, x, time_steps=time_steps), expected)
    with pytest.raises(PipelinedOnlyError, match="pascal_simulation"):
        serial_forward(network, x, time_steps=4)
    trains = {name: neuron.spike_train(torch.randn(2, 4, 8, 8), time_steps=9) for name, neuron in
              list(network.neurons())[:1]}
    assert next(iter(trains.values())).shape[0] == 3  # the emission window is the layer's own L


def test_pascal_network_checkpoint_round_trip(tmp_path):
    levels = (3, 2, 5, 4, 2, 4, 3)
    spec = ModelSpec("vgg-small", (1, 28, 28), 10, ActivationSpec(levels=levels, threshold=1.5), width=2)
    model = build_model(spec).eval()
    network = convert(model, neuron=neuron_factory("pascal"))
    save_snn(tmp_path / "snn.pt", network, spec, method="pascal", from_relu=False)
    loaded, _, data = load_snn(tmp_path / "snn.pt")
    assert data["method"] == "pascal"
    assert [n.levels for _, n in loaded.neurons()] == list(levels)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(pascal_simulation(loaded, x).output, model(x))


def test_cli_evaluate_method_pascal(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from parasnn.cli import main
    spec = ModelSpec("vgg-small", (1, 8, 8), 10, ActivationSpec(levels=(2, 3, 4, 2, 3, 4, 2), threshold=1.0), width=2)
    torch.manual_seed(0)
    save_ann(tmp_path / "model.pt", build_model(spec).eval(), spec, config={"dataset": "digits"})
    report = tmp_path / "pascal.json"
    assert main(["evaluate", str(tmp_path / "model.pt"), "--method", "pascal", "--limit", "64", "--batch-size", "32",
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "T_eff" in out and "PASCAL serial" in out
    data = json.loads(report.read_text())
    assert data["snn_accuracy"] == data["ann_accuracy"]
    assert data["equal_outputs"] == data["samples"] == 64
    assert data["effective_latency"] == _paper_latency((2, 3, 4, 2, 3, 4, 2))
    assert all(layer["level_mismatches"] == 0 for layer in data["layers"])
    activity = data["activity"]
    assert activity["synapses"][0]["analog_input"] and activity["total_sops"] >= 0
    assert [layer["time_steps"] for layer in activity["neurons"]] == [2, 3, 4, 2, 3, 4, 2]
    # A saved PASCAL SNN brings its method along: evaluate --snn takes the PASCAL route by itself.
    assert main(["convert", str(tmp_path / "model.pt"), "--method", "pascal", "--out", str(tmp_path / "snn.pt")]) == 0
    assert main(["evaluate", str(tmp_path / "model.pt"), "--snn", str(tmp_path / "snn.pt"), "--limit", "32",
                 "--no-activity", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["method"] == "pascal" and data["equal_outputs"] == data["samples"] == 32


def test_options_and_empty_data_give_clear_errors():
    model = _randomised((3, 5, 2, 4), 7)
    network = convert(model, neuron=PascalNeuron.from_qcfs)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"accumulation must be one of \['inputs', 'currents'\], got 'sum'"):
        pascal_simulation(network, x, accumulation="sum")
    with pytest.raises(ValueError, match="correction must be one of"):
        pascal_simulation(network, x, correction="none")
    with pytest.raises(ValueError, match="no test batches"):
        evaluate_pascal(model, network, [])
