"""Distribution-aware calibration ([STDC]): each stage on small models, what it may and
may not touch, memory independent of T, checkpoints, and clear errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import LargestTensor, without_clock
from parasnn.calibration.baseline import OriginalActivation, batchnorms, convert_for_calibration
from parasnn.calibration.batches import split_batches
from parasnn.calibration.batchnorm import (_LocalBatchNorm, _StraightThroughNeuron, _SynchronisedBatchNorm,
                                           fit_batchnorm, recalibrate_batchnorm)
from parasnn.calibration.bias import correct_temporal_bias
from parasnn.calibration.config import CalibrationConfig, CalibrationError, QuantizerGradient, Stage, parse_stages
from parasnn.calibration.da import calibrate_distribution, layer_errors
from parasnn.calibration.guard import evaluate_loss
from parasnn.calibration.pipeline import calibrate, calibrate_with_report, run_stages
from parasnn.runtime.schedule import warmup_cosine
from parasnn.io.checkpoint import load_snn, save_snn
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
from parasnn.neurons import QCFS

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _randomise_batchnorm(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(module.num_features, generator=generator) * 0.4)
    return model


class SmallNet(nn.Module):
    """conv-BN-act ×2 → avg-pool → linear-act → linear; ``activation`` makes each site."""

    def __init__(self, activation):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), activation()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), activation()
        self.pool = nn.AvgPool2d(2)
        self.fc1, self.act3 = nn.Linear(6 * 4 * 4, 12), activation()
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.pool(self.act2(self.bn2(self.conv2(x))))
        return self.fc2(self.act3(self.fc1(torch.flatten(x, 1))))


def _qcfs_net(levels=8):
    torch.manual_seed(0)
    return _randomise_batchnorm(SmallNet(lambda: QCFS(levels=levels, threshold=1.0))).eval()


def _relu_net():
    torch.manual_seed(0)
    return _randomise_batchnorm(SmallNet(nn.ReLU)).eval()


def _data(count=6, batch=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 8, 8, generator=generator), torch.randint(0, 5, (batch,), generator=generator))
            for _ in range(count)]


def _config(**changes):
    base = dict(time_steps=2, batch_size=32, validation_fraction=0.0, bn_epochs=1, bias_epochs=2,
                validation_interval=2)
    base.update(changes)
    return CalibrationConfig(**base)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


# -- options -----------------------------------------------------------------------------------

def test_stages_parse_in_fixed_order_and_reject_unknown_names():
    assert parse_stages("bias,da") == (Stage.DA, Stage.BIAS)
    assert parse_stages("bn, bias,bn") == (Stage.BN, Stage.BIAS)
    assert parse_stages("none") == () and parse_stages("") == ()
    with pytest.raises(CalibrationError, match="unknown calibration stage.*'spatial'"):
        parse_stages("da,spatial")
    config = CalibrationConfig(stages=["bias", "da"])
    assert config.stages == (Stage.DA, Stage.BIAS)
    assert CalibrationConfig.from_dict(config.to_dict()) == config


def test_schedule_warms_up_linearly_then_decays_to_the_final_rate():
    factors = [warmup_cosine(s, total_steps=10, warmup_steps=2, final_fraction=0.1) for s in range(11)]
    assert factors[0] == pytest.approx(0.5) and factors[1] == pytest.approx(1.0)
    assert factors[2] == pytest.approx(1.0) and factors[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


# -- stage da ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["qcfs", "relu"])
def test_da_moves_layerwise_mean_errors_toward_zero(backbone):
    model = _qcfs_net(levels=8) if backbone == "qcfs" else _relu_net()
    data = _data(count=8)
    config = _config(time_steps=2, momentum=0.9)
    network, originals = convert_for_calibration(model, data, config=config)
    assert all((o.levels is None) == (backbone == "relu") for o in originals.values())
    before = layer_errors(network, originals, data, time_steps=2)
    calibrated, report = calibrate_distribution(network, data, originals=originals, config=config)
    after = layer_errors(calibrated, originals, data, time_steps=2)
    paths = [p for p, _ in network.neurons()]
    # The first layer sees the same input in both models: no pre-activation error to correct.
    assert before[paths[0]][0] == 0.0
    for path in paths[1:]:
        assert after[path][0] < 0.1 * before[path][0], (path, before[path], after[path])
    for path in paths:
        assert after[path][1] < before[path][1], (path, before[path], after[path])
    # Per-channel terms on the neurons; the input network untouched.
    neuron = dict(calibrated.neurons())[paths[1]]
    assert neuron.pre_shift.shape == (6,) and neuron.amplitude.shape == (6,)
    assert all(n.pre_shift.dim() == 0 for _, n in network.neurons())
    assert set(report.details["layers"]) == set(paths)


def test_da_is_the_identity_where_the_models_already_agree():
    # A QCFS backbone with L = 4 run at T = 4 is lossless: errors are 0 and stay 0.
    model = _qcfs_net(levels=4)
    data = _data(count=3)
    network, originals = convert_for_calibration(model, data, config=_config(time_steps=4))
    calibrated, _ = calibrate_distribution(network, data, originals=originals, config=_config(time_steps=4))
    x = data[0][0]
    with torch.no_grad():
        assert torch.equal(calibrated(x, time_steps=4), model(x))
    for _, neuron in calibrated.neurons():
        assert torch.equal(neuron.pre_shift, torch.zeros_like(neuron.pre_shift))
        assert torch.equal(neuron.amplitude, neuron.threshold.expand_as(neuron.amplitude))


def test_original_activation_is_qcfs_or_clipped_relu():
    x = torch.linspace(-1, 3, 41)
    assert torch.equal(OriginalActivation(threshold=2.0)(x), x.clamp(0, 2))
    qcfs = QCFS(levels=4, threshold=2.0)
    with torch.no_grad():
        assert torch.equal(OriginalActivation(threshold=2.0, levels=4)(x), qcfs(x))


# -- stage bn --------------------------------------------------------------------------------

def test_stage_bn_changes_only_batchnorm_parameters_and_statistics():
    model = _relu_net()
    data = _data()
    network, _ = convert_for_calibration(model, data, config=_config())
    before = _state(network)
    calibrated, report = recalibrate_batchnorm(network, data, config=_config(bn_learning_rate=1e-2))
    after = _state(calibrated)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    bn_keys = {k for k in before if any(k.endswith("bn1." + n) or k.endswith("bn2." + n) for n in BN_KEYS)}
    assert changed and changed <= bn_keys, changed - bn_keys
    # Both the statistics and the affine terms moved, of every BN layer.
    for name in ("bn1", "bn2"):
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert f"graph_module.{name}.{key}" in changed
    assert all(torch.equal(before[k], v) for k, v in _state(network).items())  # input untouched
    assert not any(m.training for m in calibrated.modules())  # BN back to eval
    assert not any(p.requires_grad for p in calibrated.parameters())
    assert report.steps == len(data)


@pytest.mark.parametrize("revert", [True, False])
def test_a_stage_that_raises_the_held_out_loss_is_undone(revert):
    model = _relu_net()
    data = _data()
    config = _config(bn_learning_rate=1.0, bn_final_learning_rate=1.0, bn_epochs=3, revert_if_worse=revert)
    network, _ = convert_for_calibration(model, data, config=config)
    # Held-out labels = the network's own predictions, training labels random: fitting γ, β to
    # the training labels moves the predictions away from the held-out labels.
    held_inputs = [x for x, _ in _data(count=2, seed=5)]
    with torch.no_grad():
        validation = [(x, network(x, time_steps=2).argmax(1)) for x in held_inputs]
    calibrated, report = recalibrate_batchnorm(network, data, config=config, validation=validation)
    before = evaluate_loss(network, validation, time_steps=2)["loss"]
    after = evaluate_loss(calibrated, validation, time_steps=2)["loss"]
    if revert:
        assert report.details["reverted"] is True
        assert report.details["validation_loss_after"] > report.details["validation_loss_before"] == before
        assert _state(calibrated).keys() == _state(network).keys()
        assert all(torch.equal(v, _state(network)[k]) for k, v in _state(calibrated).items())
        assert calibrated is not network
    else:
        assert "reverted" not in report.details and after > before
    # A stage that helps is kept: judged on its own training data, fitting lowers the loss.
    kept, report = recalibrate_batchnorm(network, data, config=config, validation=data)
    assert any(not torch.equal(v, _state(network)[k]) for k, v in _state(kept).items())
    if revert:
        assert report.details["reverted"] is False
        assert report.details["validation_loss_after"] <= report.details["validation_loss_before"]
    else:
        assert "reverted" not in report.details


def test_stage_bn_running_statistics_are_the_calibration_average():
    # With affine fine-tuning at a negligible rate, the final statistics pass leaves the
    # average of the batch statistics of the DA-QCFS network (Eq. 10 of [STDC]).
    model = _relu_net()
    data = _data(count=4)
    network, _ = convert_for_calibration(model, data, config=_config())
    calibrated, _ = recalibrate_batchnorm(network, data, config=_config(bn_learning_rate=1e-12,
                                                                        bn_final_learning_rate=1e-12))
    captured = []
    handle = calibrated.graph_module.bn1.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        for x, _ in data:
            calibrated(x, time_steps=2)
    handle.remove()
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in captured]).mean(0)
    variances = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in captured]).mean(0)
    bn = calibrated.graph_module.bn1
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert torch.allclose(bn.running_var, variances, rtol=1e-4)


def test_stage_bn_does_not_depend_on_the_running_statistics_it_is_handed():
    # Alg. 2 re-estimates the statistics before the fine-tuning too; parasnn skips that pass,
    # because the fine-tuning uses batch statistics and the final pass starts from reset
    # ones. Were any value of the statistics handed in to survive, this would fail.
    model = _relu_net()
    data = _data(count=4)
    network, _ = convert_for_calibration(model, data, config=_config())
    scrambled = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(5)
    for bn in batchnorms(scrambled).values():
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator) * 3)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) * 5 + 0.1)
        bn.num_batches_tracked.fill_(17)
    config = _config(bn_learning_rate=1e-2)
    a, _ = fit_batchnorm(network, data, config=config)
    b, _ = fit_batchnorm(scrambled, data, config=config)
    assert a.layers.keys() == b.layers.keys() and a.layers
    for path in a.layers:
        for name, value in a.layers[path].items():
            assert torch.equal(value, b.layers[path][name]), (path, name)


def test_stage_bn_gradient_is_the_surrogate_by_default_and_straight_through_on_request():
    model = _relu_net()
    data = _data()
    network, _ = convert_for_calibration(model, data, config=_config())
    neuron = dict(network.neurons())["act1"]
    proxy = _StraightThroughNeuron(neuron)
    current = torch.linspace(-0.5, 3 * float(neuron.threshold), 301).view(1, 1, 1, -1).requires_grad_(True)
    with torch.no_grad():  # the proxy computes the neuron's values exactly
        assert torch.equal(proxy(current, time_steps=2), neuron(current, time_steps=2))
    proxy(current, time_steps=2).sum().backward()
    theta = float(neuron.threshold)
    charge = 2 * current.detach() + theta / 2
    inside = (charge > 0) & (charge < 2 * theta)  # count strictly between 0 and T: STE passes
    expected = torch.where(inside, torch.ones_like(charge), torch.zeros_like(charge))  # d(θk/T)/dz = 1
    assert torch.allclose(current.grad, expected)
    current.grad = None
    neuron(current, time_steps=2).sum().backward()
    assert not torch.allclose(current.grad, expected)  # the triangle surrogate is another gradient
    results = {}
    for gradient in QuantizerGradient:
        calibrated, report = recalibrate_batchnorm(network, data, config=_config(bn_gradient=gradient,
                                                                                 bn_learning_rate=1e-2))
        assert report.details["gradient"] == gradient.value
        results[gradient] = calibrated.graph_module.bn1.weight
    assert not torch.equal(results[QuantizerGradient.STRAIGHT_THROUGH], results[QuantizerGradient.SURROGATE])
    assert CalibrationConfig().bn_gradient is QuantizerGradient.SURROGATE
    default, report = recalibrate_batchnorm(network, data, config=_config(bn_learning_rate=1e-2))
    assert report.details["gradient"] == "surrogate"
    assert torch.equal(default.graph_module.bn1.weight, results[QuantizerGradient.SURROGATE])


@pytest.mark.parametrize("kind", [_SynchronisedBatchNorm, _LocalBatchNorm])
@pytest.mark.parametrize("cumulative", [False, True])
def test_both_train_mode_batchnorms_in_one_process_are_batchnorm(kind, cumulative):
    # The synchronised layer (torchrun) and the local one (PyTorch's kernel) against
    # nn.BatchNorm2d: outputs, gradients and running statistics over three batches.
    torch.manual_seed(0)
    reference = _randomise_batchnorm(nn.BatchNorm2d(3)).train()
    if cumulative:
        reference.momentum = None  # PyTorch's cumulative average: Eq. 10
    ours_bn = copy.deepcopy(reference)
    ours = kind(ours_bn, cumulative=cumulative)
    for batch in range(3):
        x = torch.randn(8, 3, 5, 5) * 2 + 1 + batch
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = reference(a), ours(b)
        assert torch.allclose(ya, yb, atol=1e-5)
        (ya * torch.arange(ya.numel()).view_as(ya).sin()).sum().backward()
        (yb * torch.arange(yb.numel()).view_as(yb).sin()).sum().backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
        assert torch.allclose(reference.weight.grad, ours_bn.weight.grad, atol=1e-4)
        assert torch.allclose(reference.running_mean, ours_bn.running_mean, atol=1e-6)
        assert torch.allclose(reference.running_var, ours_bn.running_var, atol=1e-5)
        assert int(reference.num_batches_tracked) == int(ours_bn.num_batches_tracked) == batch + 1
    ours.eval()
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(ours(x), reference.eval()(x), atol=1e-6)  # eval mode: the layer itself


def test_one_process_recalibrates_with_pytorchs_batchnorm():
    from parasnn.calibration.batchnorm import _train_mode_batchnorm
    assert isinstance(_train_mode_batchnorm(nn.BatchNorm2d(2), cumulative=True), _LocalBatchNorm)


# -- stage bias ------------------------------------------------------------------------------

def test_stage_bias_changes_only_the_per_channel_temporal_biases():
    model = _relu_net()
    data = _data()
    network, _ = convert_for_calibration(model, data, config=_config())
    before = _state(network)
    calibrated, report = correct_temporal_bias(network, data, config=_config(bias_learning_rate=0.05))
    after = _state(calibrated)
    changed = {k for k in after if k not in before or not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(".temporal_bias") for k in changed), changed
    channels = {"act1": 4, "act2": 6, "act3": 12}
    for path, neuron in calibrated.neurons():
        assert neuron.temporal_bias.shape == (channels[path],)
        assert not neuron.temporal_bias.requires_grad
    assert report.details["parameters"] == sum(channels.values())
    assert report.steps == 2 * len(data)
    assert all(n.temporal_bias.dim() == 0 for _, n in network.neurons())  # input untouched


def test_stage_bias_early_stopping_keeps_the_best_validated_biases():
    model = _relu_net()
    data = _data(count=8)
    training, validation = split_batches(data, validation_fraction=0.25)
    assert len(validation) == 2 and len(training) == 6
    network, _ = convert_for_calibration(model, training, config=_config())
    # An absurd learning rate makes things worse: training stops after `patience`
    # validations and hands back the best biases seen (here possibly the initial zeros).
    config = _config(bias_learning_rate=50.0, bias_final_learning_rate=50.0, bias_epochs=20, patience=2,
                     validation_interval=1, clip_norm=1e6)
    calibrated, report = correct_temporal_bias(network, training, config=config, validation=validation)
    from parasnn.calibration.guard import evaluate_loss
    initial = evaluate_loss(network, validation, time_steps=2)["loss"]
    final = evaluate_loss(calibrated, validation, time_steps=2)["loss"]
    assert report.details["stopped_early"] and report.steps < 20 * len(training)
    assert final <= initial + 1e-6
    assert final == pytest.approx(report.details["best_validation_loss"], rel=1e-6)


def test_run_stages_measures_each_network_on_the_held_out_batches_once_stages_included(monkeypatch):
    import parasnn.calibration.bias as bias
    import parasnn.calibration.pipeline as pipeline
    model = _qcfs_net(levels=2)
    data = _data(count=8)
    training, validation = split_batches(data, validation_fraction=0.25)
    # stage bn at an absurd rate is reverted: the reverted copy's result is its input's
    config = _config(bn_learning_rate=50.0, bn_final_learning_rate=50.0)
    network, originals = convert_for_calibration(model, training, config=config)
    seen, in_bias = [], []
    measure = pipeline.evaluate_loss

    def counting(into):
        def evaluate(candidate, batches, *, time_steps):
            into.append(candidate)
            return measure(candidate, batches, time_steps=time_steps)
        return evaluate

    monkeypatch.setattr(pipeline, "evaluate_loss", counting(seen))
    monkeypatch.setattr(bias, "evaluate_loss", counting(in_bias))
    calibrated, report = run_stages(network, training, config=config, originals=originals, validation=validation)
    assert len(seen) == len({id(n) for n in seen}) == 4  # fs-pc, da's, bn's and bias's results
    # Stage bias judges the biases it tries (those it came with included, step 0) on its folded
    # working copy; the network it returns is measured by the pipeline, unfolded.
    validations = report.stages[2].details["validations"]
    assert len(in_bias) == len(validations) and all(type(n).__name__ == "FusedNetwork" for n in in_bias)
    assert not batchnorms(in_bias[0]) and batchnorms(seen[-1])
    assert validations[0]["loss"] == pytest.approx(report.validation["bn"]["loss"], rel=1e-4)
    assert [s.stage for s in report.stages] == ["da", "bn", "bias"] and report.stages[1].details["reverted"] is True
    for name, result in report.validation.items():
        assert set(result) == {"loss", "accuracy", "samples"}
    assert report.validation["bn"] == report.validation["da"]  # reverted: the same network
    assert report.validation["bias"] == measure(calibrated, validation, time_steps=2)


def test_the_report_says_where_the_time_went(monkeypatch):
    import time

    import parasnn.calibration.bias as bias
    import parasnn.calibration.pipeline as pipeline
    model, data = _qcfs_net(levels=2), _data(count=8)
    calls = {"pipeline": 0, "bias": 0}
    measure = pipeline.evaluate_loss

    def slow(where):
        def evaluate(candidate, batches, *, time_steps):
            calls[where] += 1
            time.sleep(0.05)
            return measure(candidate, batches, time_steps=time_steps)
        return evaluate

    monkeypatch.setattr(pipeline, "evaluate_loss", slow("pipeline"))
    monkeypatch.setattr(bias, "evaluate_loss", slow("bias"))
    start = time.perf_counter()
    _, report = calibrate_with_report(model, data, config=_config(validation_fraction=0.25))
    total = time.perf_counter() - start
    seconds = report.to_dict()["seconds"]
    assert list(seconds) == ["convert", "held-out fs-pc", "da", "held-out da", "bn", "held-out bn",
                             "bias", "held-out bias"]
    assert sum(spent["wall"] for spent in seconds.values()) <= total
    for part in ("held-out fs-pc", "held-out da", "held-out bn", "held-out bias"):
        assert seconds[part]["wall"] >= 0.05 and seconds[part]["cpu"] >= 0
    in_bias = report.stages[2].details["seconds"]["held-out"]
    assert calls["bias"] >= 2 and in_bias["wall"] >= 0.05 * calls["bias"] and in_bias["wall"] <= seconds["bias"]["wall"]
    statistics = report.stages[1].details["seconds"]["statistics"]
    assert 0 < statistics["cpu"] <= seconds["bn"]["cpu"]


def test_the_measuring_passes_read_a_random_statistics_size_sample_and_all_of_it_changes_nothing(monkeypatch):
    import parasnn.calibration.batchnorm as batchnorm
    model = _relu_net()
    data = _data(count=10)
    everything = _config(statistics_size=None, bias_epochs=1)
    covering = everything.replace(statistics_size=10 * 32)  # a sample that covers every batch
    a, report_a = calibrate_with_report(model, data, config=everything)
    b, report_b = calibrate_with_report(model, data, config=covering)
    assert all(torch.equal(v, _state(b)[k]) for k, v in _state(a).items())
    read = []
    measure = batchnorm._statistics_pass
    monkeypatch.setattr(batchnorm, "_statistics_pass",
                        lambda network, norms, batches, **kw: read.append(len(batches)) or measure(network, norms, batches, **kw))
    _, report = calibrate_with_report(model, data, config=everything.replace(statistics_size=70))
    # 10 training batches: stage da and the statistics pass read ceil(70/32) = 3 of them
    assert report.stages[0].steps == 3 and read == [3]
    assert report.stages[1].steps == 10  # stage bn still learns on every batch
    with pytest.raises(CalibrationError, match="statistics_size"):
        _config(statistics_size=0)


@pytest.mark.parametrize("make", [_relu_net, lambda: _qcfs_net(levels=2)])
def test_the_stages_run_fused_neurons_and_get_the_references_bits(make, monkeypatch):
    # On CPU the stages train and validate a fused copy (parasnn.neurons.fused); run again with
    # the reference neurons, every number the calibration produced must be the same.
    import parasnn.calibration.baseline as baseline
    import parasnn.calibration.guard as guard
    model = make()
    data = _data(count=8)
    config = _config(validation_fraction=0.25, bn_learning_rate=1e-2, bias_learning_rate=0.05)
    fused_network, fused_report = calibrate_with_report(model, data, config=config)
    kinds = set()
    fast_view = baseline.fast_view
    def reference(network):
        kinds.add(type(fast_view(network)).__name__)
        return network

    for module in (baseline, guard):
        monkeypatch.setattr(module, "fast_view", reference)
    reference_network, reference_report = calibrate_with_report(model, data, config=config)
    assert kinds == {"FusedNetwork"}  # what the first run used
    assert _state(fused_network).keys() == _state(reference_network).keys()
    assert all(torch.equal(v, _state(reference_network)[k]) for k, v in _state(fused_network).items())
    assert fused_report.validation == reference_report.validation
    assert without_clock(fused_report.to_dict()) == without_clock(reference_report.to_dict())


def test_stage_bias_validates_ten_times_per_stage_unless_an_interval_is_given():
    from parasnn.calibration.config import VALIDATIONS_PER_STAGE, BiasConfig
    model = _relu_net()
    data = _data(count=10, batch=8)
    training, validation = data[:8], data[8:]
    network, _ = convert_for_calibration(model, training, config=_config())
    # 8 batches x 5 epochs = 40 steps: every ceil(40 / 10) = 4 steps, whatever the data size
    config = CalibrationConfig(time_steps=2, validation_fraction=0.0, bias=BiasConfig(epochs=5, patience=1000))
    _, report = correct_temporal_bias(network, training, config=config, validation=validation)
    steps = [entry["step"] for entry in report.details["validations"]]
    assert report.details["validation_interval"] == 4 == -(-40 // VALIDATIONS_PER_STAGE)
    assert steps == list(range(0, 41, 4))  # step 0 (the biases it came with), then 10 validations
    assert BiasConfig().patience == 5 == VALIDATIONS_PER_STAGE // 2  # patience covers half the stage
    given = config.replace(bias=BiasConfig(epochs=5, patience=1000, validation_interval=7))
    _, report = correct_temporal_bias(network, training, config=given, validation=validation)
    assert [entry["step"] for entry in report.details["validations"]] == [0, 7, 14, 21, 28, 35, 40]
    with pytest.raises(CalibrationError, match="validation_interval"):
        BiasConfig(validation_interval=0)


# -- the whole pipeline ------------------------------------------------------------------------

def test_calibrated_network_runs_in_one_pass_and_trains_with_memory_independent_of_t():
    model = _relu_net()
    data = _data(count=4)
    network = calibrate(model, data, config=_config(time_steps=2))
    x, labels = data[0]
    largest, saved = [], []
    for steps in (2, 256):
        with torch.no_grad(), LargestTensor() as meter:
            network(x, time_steps=steps)
        largest.append(meter.largest)
        # Stage 2's training pass: what autograd stores for the backward must not grow with T.
        trainable = copy.deepcopy(network)
        for _, neuron in trainable.neurons():
            neuron.temporal_bias.requires_grad_(True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            loss = F.cross_entropy(trainable(x, time_steps=steps), labels)
        loss.backward()
        saved.append(sum(sizes))
    assert largest[0] == largest[1]
    assert saved[0] == saved[1] and saved[0] > 0


def test_calibrate_returns_a_new_network_and_leaves_the_model_alone():
    model = _relu_net()
    before = _state(model)
    data = _data(count=5)
    network, report = calibrate_with_report(model, data, config=_config(validation_fraction=0.2))
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    assert all(isinstance(m, nn.ReLU) for m in (model.act1, model.act2, model.act3))
    assert [s.stage for s in report.stages] == ["da", "bn", "bias"]
    assert list(report.validation) == ["fs-pc", "da", "bn", "bias"]
    assert report.from_relu
    assert network(data[0][0], time_steps=2).shape == (32, 5)


def test_calibrated_snn_saves_and_reloads_with_the_same_outputs(tmp_path):
    spec = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                     activation=ActivationSpec(kind=ActivationKind.RELU))
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model(spec)).eval()
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(3)]
    config = _config(time_steps=3, percentile=99.0, levels=6)
    network = calibrate(model, data, config=config)
    save_snn(tmp_path / "snn.pt", network, spec, from_relu=True, config={"calibration": config.to_dict()})
    loaded, _, checkpoint = load_snn(tmp_path / "snn.pt")
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, time_steps=3), network(x, time_steps=3))
    neuron = dict(loaded.neurons())["classifier.2"]
    assert neuron.temporal_bias.shape == (32,) and neuron.pre_shift.shape == (32,)
    assert CalibrationConfig.from_dict(checkpoint["config"]["calibration"]) == config


# -- errors ----------------------------------------------------------------------------------------

def test_bad_input_gives_clear_errors():
    model = _relu_net()
    data = _data(count=2)
    no_bn = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(CalibrationError, match="stage bn .*BatchNorm.*none"):
        calibrate(no_bn, [(torch.randn(8, 4), torch.randint(0, 3, (8,)))], config=_config(stages="bn"))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(CalibrationError, match="time_steps T must be an integer >= 1"):
            CalibrationConfig(time_steps=bad)
    with pytest.raises(CalibrationError, match="calibrate: the data is empty"):
        calibrate(model, [], config=_config())
    with pytest.raises(CalibrationError, match="the data is empty"):
        recalibrate_batchnorm(convert_for_calibration(model, data, config=_config())[0], [], config=_config())
    with pytest.raises(CalibrationError, match="no labels"):
        calibrate(model, [x for x, _ in data], config=_config(stages="bias"))
    # Inputs alone are enough when no stage trains.
    assert calibrate(model, [x for x, _ in data], config=_config(stages="da")) is not None
    with pytest.raises(CalibrationError, match="not from a converted SpikingNetwork"):
        calibrate(calibrate(model, data, config=_config(stages="")), data)
    with pytest.raises(CalibrationError, match="original activation"):
        network, _ = convert_for_calibration(model, data, config=_config())
        run_stages(network, data, config=_config(stages="da"))
    with pytest.raises(CalibrationError, match="momentum"):
        CalibrationConfig(momentum=1.0)
