"""PMSM ([PMSM], docs/maths.md §6): the signed quantizer, the signed multi-spike neuron (lossless
at T = 1, refining at T > 1), the entropy initialisation, and the pipeline around them."""
import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from parasnn.io.checkpoint import load_ann, load_snn, save_ann, save_snn
from parasnn.conversion.stages import convert
from parasnn.conversion.graph import ConversionError
from parasnn.conversion.methods import Method, neuron_factory
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
from parasnn.neurons import QCFS
from parasnn.neurons.pmsm import (PolarityMultiSpikeNeuron, PolarityQuantizer, parallel_polarity_count,
                                  polarity_level, polarity_spike_train, signed_clip, simulate_multi_spike)
from parasnn.neurons.pmsm_initialisation import (entropy_initialisation, level_entropy, level_probabilities,
                                                 percentile_initialisation)
from parasnn.methods.pmsm import Initialisation, PMSMConfig, quantize_network, record_preactivations, signed_sites
from parasnn.simulation.forms import parallel_forward, parallel_simulation, serial_forward, serial_simulation

# Dyadic values (multiples of 1/16, |x| < 2^9) and power-of-two thresholds: every sum, product
# and quotient below is exact in float64, so serial and parallel forms can be compared bit for bit.
grid = st.integers(min_value=-4096, max_value=4096).map(lambda n: n / 16)
power_of_two = st.integers(min_value=-3, max_value=3).map(lambda e: 2.0 ** e)
level_counts = st.integers(min_value=0, max_value=6)


def _quantizer(positive, negative, scale, quantized=True):
    return PolarityQuantizer(levels=positive, negative_levels=negative, scale=scale, quantized=quantized)


# --------------------------------------------------------------------------- T = 1 is lossless


@given(level_counts, level_counts, st.floats(min_value=0.01, max_value=20),
       st.lists(st.floats(min_value=-60, max_value=60, width=32), min_size=1, max_size=64))
def test_neuron_at_t1_equals_signed_quantizer_bit_for_bit(positive, negative, scale, values):
    if positive + negative == 0:
        positive = 1
    activation = _quantizer(positive, negative, scale)
    neuron = PolarityMultiSpikeNeuron.from_quantizer(activation)
    x = torch.tensor(values, dtype=torch.float32).view(1, -1)
    with torch.no_grad():
        expected = activation(x)
        assert torch.equal(neuron(x, time_steps=1), expected)  # parallel form
        state, output = neuron.step(neuron.initial_state(x, time_steps=1), x, time_steps=1)
        assert torch.equal(output, expected)  # serial form, first step
        count = neuron.spike_count(x, time_steps=1)
    assert torch.equal(count * activation.threshold().detach(), expected)
    assert bool((count >= -negative).all() and (count <= positive).all())
    # The residual is what the first step could not emit.
    assert torch.allclose(state + output, x, atol=1e-5 * (1 + float(x.abs().max())))


def _random_signed_network(seed, name="vgg-small", shape=(1, 28, 28)):
    generator = torch.Generator().manual_seed(seed)
    model = build_model(ModelSpec(name=name, input_shape=shape, num_classes=10, width=4,
                                  activation=ActivationSpec(kind=ActivationKind.SIGNED, levels=3, threshold=1.0)))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
        if isinstance(module, PolarityQuantizer):  # different splits and steps per layer
            module.quantized = True
            module.positive_levels = int(torch.randint(0, 5, (1,), generator=generator))
            module.negative_levels = int(torch.randint(1, 5, (1,), generator=generator))
            module.scale.data.fill_(float(torch.rand(1, generator=generator)) * 2 + 0.2)
    return model.eval()


@settings(max_examples=4)
@given(st.integers(min_value=0, max_value=10_000))
def test_whole_network_at_t1_equals_quantized_ann_bit_for_bit(seed):
    model = _random_signed_network(seed)
    network = convert(model, neuron=neuron_factory(Method.PMSM))
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(parallel_forward(network, x, time_steps=1), expected)
    assert torch.equal(serial_forward(network, x, time_steps=1), expected)


def test_residual_network_at_t1_equals_quantized_ann():
    model = _random_signed_network(3, name="resnet20", shape=(3, 16, 16))
    network = convert(model, neuron=neuron_factory(Method.PMSM))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(parallel_forward(network, x, time_steps=1), expected)
    assert torch.equal(serial_forward(network, x, time_steps=1), expected)


# --------------------------------------------------------------------------- T > 1


@st.composite
def layer_case(draw):
    positive, negative = draw(level_counts), draw(level_counts)
    if positive + negative == 0:
        negative = 2
    return (draw(st.integers(min_value=1, max_value=24)), draw(power_of_two), positive, negative,
            torch.tensor(draw(st.lists(grid, min_size=1, max_size=16)), dtype=torch.float64))


@given(layer_case())
def test_serial_equals_parallel_for_constant_current(case):
    steps, threshold, positive, negative, current = case
    levels = {"negative_levels": negative, "positive_levels": positive}
    serial = simulate_multi_spike(current.expand(steps, -1), threshold=threshold, **levels)
    parallel = parallel_polarity_count(steps * current, threshold=threshold, time_steps=steps, **levels)
    assert torch.equal(serial.sum(0), parallel)
    # Not only the count: the materialised parallel train is the serial train.
    assert torch.equal(polarity_spike_train(current, threshold=threshold, time_steps=steps, **levels), serial)
    # At most L⁺ / L⁻ spikes per step, and one polarity per train for a constant current.
    assert bool((serial <= positive).all() and (serial >= -negative).all())
    assert bool(((serial >= 0).all(0) | (serial <= 0).all(0)).all())


@given(layer_case())
def test_refinement_never_increases_a_layers_error(case):
    steps, threshold, positive, negative, current = case
    levels = {"negative_levels": negative, "positive_levels": positive}
    target = signed_clip(current, threshold=torch.tensor(threshold, dtype=torch.float64), **levels)

    def output(t):  # time-averaged output of the layer after t steps
        return parallel_polarity_count(t * current, threshold=threshold, time_steps=t, **levels) * threshold / t

    error_at_1 = (output(1) - target).abs()
    for t in range(2, steps + 1):
        error = (output(t) - target).abs()
        assert bool((error <= error_at_1).all())
        assert bool((error <= threshold / (2 * t) + 1e-12).all())  # at most half a refined step (ties: =)


def test_refinement_on_a_network_layer_with_real_currents():
    # The first layer of a converted network sees a constant current (the image): its error
    # against the full-precision signed clip shrinks with T and never exceeds the T = 1 error.
    model = _random_signed_network(7)
    network = convert(model, neuron=neuron_factory(Method.PMSM))
    first_name, first = next(network.neurons())
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        current = model.features[1](model.features[0](x))
        target = signed_clip(current, threshold=first.threshold, negative_levels=first.negative_levels,
                             positive_levels=first.positive_levels)
        errors = [float((first(current, time_steps=t) - target).abs().mean()) for t in (1, 2, 4, 8)]
        pointwise_1 = (first(current, time_steps=1) - target).abs()
        for t in (2, 4, 8):
            assert bool(((first(current, time_steps=t) - target).abs() <= pointwise_1 + 1e-6).all())
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 4


def test_multi_spikes_are_counted_as_their_number_of_spikes():
    activation = _quantizer(3, 2, 1.25)
    neuron = PolarityMultiSpikeNeuron.from_quantizer(activation)
    x = torch.tensor([[-2.0, -0.2, 0.0, 0.6, 1.0, 9.0]])
    _, output = neuron.step(neuron.initial_state(x, time_steps=1), x, time_steps=1)
    assert torch.equal(neuron.spikes_in(output), torch.tensor([[2.0, 0.0, 0.0, 1.0, 2.0, 3.0]]))
    model = _random_signed_network(2)
    network = convert(model, neuron=neuron_factory(Method.PMSM))
    images = torch.randn(3, 1, 28, 28)
    serial = serial_simulation(network, images, time_steps=1).spike_counts
    parallel = parallel_simulation(network, images, time_steps=1).spike_counts
    for name in parallel:  # the signed count's magnitude is the number of spikes
        assert torch.equal(serial[name], parallel[name].abs())


# --------------------------------------------------------------------------- entropy rule


def _evenly(low, high, count=40_000):
    # Points at the centres of `count` equal cells: an exact, noise-free uniform sample.
    return low + (torch.arange(count, dtype=torch.float64) + 0.5) * (high - low) / count


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_entropy_rule_on_a_uniform_distribution_makes_levels_equiprobable(levels):
    # Uniform on [−a, a]: every level equally likely iff θ = 2a/(2L + 1), H = log2(2L + 1).
    a = 1.5
    choice = entropy_initialisation(_evenly(-a, a), levels=levels, positive_range=a, negative_range=a)
    assert (choice.negative_levels, choice.positive_levels) == (levels, levels)
    assert choice.threshold == pytest.approx(2 * a / (2 * levels + 1), rel=2e-3)
    assert choice.entropy == pytest.approx(math.log2(2 * levels + 1), abs=1e-3)


def test_entropy_rule_moves_levels_to_the_polarity_that_carries_the_mass():
    # Uniform on [−1, 5] with a budget of 2 levels: three equiprobable levels 0, 1, 2 with θ = 2
    # (and none below 0) beat any split that spends a level on the thin negative side.
    choice = entropy_initialisation(_evenly(-1.0, 5.0), levels=1, positive_range=5.0, negative_range=1.0)
    assert (choice.negative_levels, choice.positive_levels) == (0, 2)
    assert choice.threshold == pytest.approx(2.0, rel=2e-3)
    assert choice.entropy == pytest.approx(math.log2(3), abs=1e-3)
    mirrored = entropy_initialisation(_evenly(-5.0, 1.0), levels=1, positive_range=1.0, negative_range=5.0)
    assert (mirrored.negative_levels, mirrored.positive_levels) == (2, 0)


def test_entropy_rule_stays_inside_the_full_precision_range():
    # A narrow full-precision range binds: the best θ is the largest allowed, r/L.
    sample = torch.randn(50_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    choice = entropy_initialisation(sample, levels=4, positive_range=0.4, negative_range=0.4)
    assert choice.threshold * choice.positive_levels <= 0.4 + 1e-12
    assert choice.threshold * choice.negative_levels <= 0.4 + 1e-12
    assert choice.threshold == pytest.approx(0.1, rel=1e-3)
    # Unconstrained on a Gaussian: symmetric, and more informative than the 99.9th percentile.
    wide = entropy_initialisation(sample, levels=4, positive_range=100.0, negative_range=100.0)
    plain = percentile_initialisation(sample, levels=4, percentile=99.9)
    assert wide.negative_levels == wide.positive_levels == 4
    assert wide.entropy > plain.entropy + 0.1


def test_level_probabilities_match_the_quantizer_histogram():
    sample = torch.randn(5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for theta in (0.3, 0.77, 2.5):
        levels = polarity_level(sample, threshold=theta, negative_levels=3, positive_levels=5)
        histogram = torch.bincount((levels + 3).long(), minlength=9).double() / sample.numel()
        assert torch.allclose(level_probabilities(sample, threshold=theta, negative_levels=3, positive_levels=5),
                              histogram)
    many = level_probabilities(sample, threshold=torch.tensor([0.3, 0.77]), negative_levels=3, positive_levels=5)
    assert many.shape == (2, 9) and torch.allclose(many.sum(1), torch.ones(2, dtype=torch.float64))
    assert float(level_entropy(sample, threshold=100.0, negative_levels=3, positive_levels=5)) == 0.0


def test_percentile_rule_on_a_known_sample():
    sample = _evenly(-2.0, 2.0, 1000)
    choice = percentile_initialisation(sample, levels=2, percentile=50)
    assert (choice.negative_levels, choice.positive_levels) == (2, 2)
    assert choice.threshold == pytest.approx(1.0 / 2, rel=1e-2)  # median |x| = 1


# --------------------------------------------------------------------------- pipeline


def test_quantize_network_records_initialises_and_leaves_the_model_alone():
    model = build_model(ModelSpec(name="vgg-small", input_shape=(1, 28, 28), num_classes=10, width=4,
                                  activation=ActivationSpec(kind=ActivationKind.SIGNED, levels=4, threshold=1.0)))
    model.eval()
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    samples = record_preactivations(model, batches, samples_per_layer=1000)
    assert set(samples) == {name for name, _ in signed_sites(model)}
    # At most the requested size; the classifier's 32 features × 16 images give only 512 values.
    assert [sample.numel() for sample in samples.values()] == [1000] * 6 + [512]
    before = {name: module.get_extra_state() for name, module in signed_sites(model)}
    for initialisation in Initialisation:
        quantized, report = quantize_network(model, batches, config=PMSMConfig(
            levels=2, initialisation=initialisation, fine_tune_epochs=0, samples_per_layer=1000))
        assert all(module.quantized for _, module in signed_sites(quantized))
        assert all(layer.negative_levels + layer.positive_levels == 4 for layer in report.layers)
        assert all(layer.entropy_bits <= math.log2(5) + 1e-9 for layer in report.layers)
        written = json.loads(json.dumps(report.to_dict()))
        assert [layer["threshold"] for layer in written["layers"]] == [layer.threshold for layer in report.layers]
    assert {name: module.get_extra_state() for name, module in signed_sites(model)} == before


def test_fine_tune_runs_and_keeps_t1_exactness():
    model = _random_signed_network(5)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    config = PMSMConfig(levels=2, fine_tune_epochs=1, batch_size=16, max_batches=2, samples_per_layer=500)
    untuned, _ = quantize_network(model, [data.tensors[0][:16]], config=dataclasses.replace(config, fine_tune_epochs=0))
    quantized, report = quantize_network(model, [data.tensors[0][:16]], train_set=data, config=config)
    assert len(report.history) == 1 and report.layers[0].fine_tuned_threshold is not None
    moved = [key for key, value in quantized.state_dict().items()
             if isinstance(value, torch.Tensor) and not torch.equal(value, untuned.state_dict()[key])]
    assert any(key.endswith("weight") for key in moved)  # the fine-tune trained something
    with pytest.raises(ValueError, match="fewer than one batch"):
        quantize_network(model, [data.tensors[0][:16]], train_set=data,
                         config=dataclasses.replace(config, batch_size=128))
    network = convert(quantized, neuron=neuron_factory(Method.PMSM))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(parallel_forward(network, x, time_steps=1), quantized(x))


def test_checkpoints_round_trip_the_quantized_ann_and_its_snn(tmp_path):
    model = _random_signed_network(11)
    spec = ModelSpec(name="vgg-small", input_shape=(1, 28, 28), num_classes=10, width=4,
                     activation=ActivationSpec(kind=ActivationKind.SIGNED, levels=3, threshold=1.0))
    save_ann(tmp_path / "q.pt", model, spec)
    restored, _, _ = load_ann(tmp_path / "q.pt")
    network = convert(restored, neuron=neuron_factory(Method.PMSM))
    save_snn(tmp_path / "s.pt", network, spec, method=Method.PMSM, from_relu=False)
    loaded, _, data = load_snn(tmp_path / "s.pt")
    assert data["method"] == "pmsm"
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(restored(x), expected)
        assert torch.equal(parallel_forward(loaded, x, time_steps=1), expected)
    assert [n.get_extra_state() for _, n in loaded.neurons()] == [n.get_extra_state() for _, n in network.neurons()]


def test_full_precision_form_is_the_signed_clip_and_trains_its_range():
    activation = PolarityQuantizer(levels=4, scale=1.0, quantized=False)
    x = torch.tensor([-3.0, -0.5, 0.2, 2.0])
    y = activation(x)
    assert torch.equal(y, torch.tensor([-1.0, -0.5, 0.2, 1.0]))
    y.sum().backward()
    assert float(activation.scale.grad) == pytest.approx(0.0)  # one clipped each way: +1 − 1
    model = build_model(ModelSpec(name="vgg-small", input_shape=(1, 28, 28), num_classes=10, width=4,
                                  activation=ActivationSpec(kind="signed", levels=4, threshold=1.5)))
    sites = signed_sites(model)
    assert len(sites) == 7 and all(not m.quantized and float(m.scale.detach()) == 1.5 for _, m in sites)


# --------------------------------------------------------------------------- errors


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="levels"):
        PolarityQuantizer(levels=-1)
    with pytest.raises(ValueError, match="levels"):
        PolarityQuantizer(levels=True)
    with pytest.raises(ValueError, match="at least one level"):
        PolarityQuantizer(levels=0, negative_levels=0)
    with pytest.raises(ValueError, match="scale"):
        PolarityQuantizer(scale=0.0)
    with pytest.raises(ValueError, match="threshold"):
        PolarityMultiSpikeNeuron(threshold=-1.0, positive_levels=2, negative_levels=2)
    neuron = PolarityMultiSpikeNeuron(threshold=1.0, positive_levels=2, negative_levels=2)
    with pytest.raises(ValueError, match="time_steps"):
        neuron(torch.zeros(1, 3), time_steps=0)
    with pytest.raises(TypeError, match="PolarityQuantizer"):
        PolarityMultiSpikeNeuron.from_quantizer(QCFS(levels=4))
    with pytest.raises(ValueError, match="empty"):
        entropy_initialisation(torch.tensor([]), levels=2, positive_range=1.0, negative_range=1.0)
    with pytest.raises(ValueError, match="finite"):
        entropy_initialisation(torch.tensor([0.0, math.nan]), levels=2, positive_range=1.0, negative_range=1.0)
    with pytest.raises(ValueError, match="ranges"):
        entropy_initialisation(torch.ones(3), levels=2, positive_range=0.0, negative_range=0.0)
    with pytest.raises(ValueError, match="percentile"):
        percentile_initialisation(torch.ones(3), levels=2, percentile=0)
    with pytest.raises(ValueError, match="levels"):
        PMSMConfig(levels=0)


def test_wrong_networks_for_a_method_fail_at_conversion():
    signed = _random_signed_network(1)
    with pytest.raises(ConversionError, match="QCFS"):  # the IF neuron does not take signed activations
        convert(signed, neuron=neuron_factory(Method.FS_PC))
    qcfs = nn.Sequential(nn.Linear(4, 4), QCFS(levels=2, threshold=1.0), nn.Linear(4, 2))
    with pytest.raises(ConversionError, match="PolarityQuantizer"):
        convert(qcfs, neuron=neuron_factory(Method.PMSM))
    relu = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="signed activations"):
        quantize_network(relu, [torch.randn(2, 4)], config=PMSMConfig(fine_tune_epochs=0))
    with pytest.raises(ValueError, match="train_set"):
        quantize_network(signed, [torch.randn(2, 1, 28, 28)], config=PMSMConfig(fine_tune_epochs=1))


# --------------------------------------------------------------------------- command line


def test_command_line_quantizes_converts_and_evaluates(tmp_path):
    pytest.importorskip("sklearn")
    from parasnn.cli import main
    from parasnn.training.train import TrainConfig, train
    train(TrainConfig(dataset="digits", model="vgg-small", width=8, activation="signed", levels=2, threshold=1.0,
                      epochs=2, batch_size=64, learning_rate=0.1, holdout=200), out_dir=tmp_path / "fp",
          device=torch.device("cpu"))
    fp, quantized, snn = tmp_path / "fp" / "model.pt", tmp_path / "q.pt", tmp_path / "s.pt"
    assert main(["pmsm", str(fp), "--levels", "2", "--out", str(quantized), "--snn", str(snn), "--epochs", "1",
                 "--max-batches", "3", "--calibration-size", "100", "--json", str(tmp_path / "r.json"),
                 "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["pmsm"]["layers"]) == 7 and (tmp_path / "q.config.json").exists()
    assert main(["convert", str(quantized), "--method", "pmsm", "--out", str(tmp_path / "s2.pt")]) == 0
    assert main(["evaluate", str(quantized), "--snn", str(snn), "--time-steps", "1,2", "--json",
                 str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    evaluation = json.loads((tmp_path / "e.json").read_text())
    at_1 = [r for r in evaluation["snn"] if r["time_steps"] == 1]
    assert {r["form"] for r in at_1} == {"parallel", "serial"}
    assert all(r["accuracy"] == evaluation["ann"]["accuracy"] for r in at_1)  # lossless at T = 1
    # The initialisation table: one row per L and initialisation, T = 1 SNN = quantized ANN.
    assert main(["pmsm", str(fp), "--compare", "entropy,range", "--levels", "1,2", "--max-batches", "1",
                 "--calibration-size", "50", "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md"),
                 "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [(r["levels"], r["initialisation"]) for r in rows] == [(1, "entropy"), (1, "range"), (2, "entropy"),
                                                                  (2, "range")]
    assert all(r["snn_t1_accuracy"] == r["initialised_accuracy"] for r in rows)
    table = (tmp_path / "t.md").read_text()
    assert table.count("| entropy |") == 2 and "--compare entropy,range --levels 1,2" in table
    assert main(["pmsm", str(fp), "--levels", "1,2", "--out", str(tmp_path / "y.pt")]) == 2  # one L to write
    assert main(["pmsm", str(fp), "--levels", "2", "--out", str(tmp_path / "y.pt"), "--markdown",
                 str(tmp_path / "y.md")]) == 2  # a table only with --compare
    assert main(["pmsm", str(fp), "--compare", "entropy", "--out", str(tmp_path / "y.pt")]) == 2  # no network
    assert not (tmp_path / "y.pt").exists() and not (tmp_path / "y.md").exists()
    # A network without signed activations is refused with a message, not a traceback.
    qcfs = tmp_path / "qcfs"
    train(TrainConfig(dataset="digits", model="vgg-small", width=4, epochs=1, batch_size=64, holdout=200,
                      max_batches=1), out_dir=qcfs, device=torch.device("cpu"))
    assert main(["pmsm", str(qcfs / "model.pt"), "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 2
