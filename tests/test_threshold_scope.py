"""Per-channel thresholds for ReLU networks (conversion/stages.py ``ThresholdScope``,
docs/decisions.md "Per-channel thresholds"): what is recorded, exactly; the SNN is still its
own QCFS proxy at T = L; calibration and checkpoints carry the (C,) thresholds."""
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from parasnn.calibration.baseline import OriginalActivation, convert_for_calibration
from parasnn.calibration.config import CalibrationConfig, CalibrationError
from parasnn.calibration.pipeline import calibrate
from parasnn.conversion.stages import (ConversionConfig, ThresholdScope, ThresholdStatistic, convert,
                                       quantize_relus, record_activation_thresholds)
from parasnn.neurons import QCFS


def _net(scales=(1.0, 10.0, 0.1)):
    """conv → ReLU with channels of very different ranges, then a linear ReLU layer."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, len(scales), 3)
    with torch.no_grad():
        conv.weight.mul_(torch.tensor(scales).view(-1, 1, 1, 1))
        conv.bias.mul_(torch.tensor(scales))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(len(scales) * 16, 4), nn.ReLU(),
                         nn.Linear(4, 3)).eval()


@settings(max_examples=25, deadline=None)
@given(percentile=st.sampled_from([50.0, 90.0, 99.9, 100.0]), batches=st.integers(1, 3), seed=st.integers(0, 99))
def test_channel_scope_records_each_channels_percentile_averaged_over_batches(percentile, batches, seed):
    model = _net()
    generator = torch.Generator().manual_seed(seed)
    data = [torch.randn(5, 1, 6, 6, generator=generator) for _ in range(batches)]
    recorded = record_activation_thresholds(model, ["1", "4"], data, ThresholdStatistic(percentile, "channel"))
    for site in ("1", "4"):
        with torch.no_grad():
            outputs = [model[: int(site) + 1](x) for x in data]
        per_batch = []
        for output in outputs:
            channels = output.transpose(0, 1).reshape(output.shape[1], -1)  # (C, everything else)
            if percentile == 100:
                per_batch.append(channels.amax(dim=1).double())
            else:
                rank = max(1, int(round(channels.shape[1] * percentile / 100)))
                per_batch.append(channels.kthvalue(rank, dim=1).values.double())
        if percentile == 100:
            expected = torch.stack(per_batch).amax(dim=0)
        else:
            expected = 0.0
            for value in per_batch:  # summed in order, as recorded
                expected = expected + value
            expected = expected / len(per_batch)
        assert torch.equal(recorded[site], expected.clamp(min=1e-3).float())
        assert recorded[site].shape == (outputs[0].shape[1],)


def test_layer_scope_records_what_it_always_did():
    model = _net()
    data = [torch.randn(5, 1, 6, 6) for _ in range(3)]
    recorded = record_activation_thresholds(model, ["1"], data, ThresholdStatistic(99.0))
    total = 0.0
    for x in data:
        with torch.no_grad():
            values = model[:2](x).flatten()
        total += float(values.kthvalue(int(round(values.numel() * 0.99))).values)
    assert isinstance(recorded["1"], float) and recorded["1"] == max(total / 3, 1e-3)


@pytest.mark.parametrize("scope", list(ThresholdScope))
def test_the_snn_is_its_own_qcfs_proxy_at_t_equal_l_in_either_scope(scope):
    model = _net()
    data = [torch.randn(16, 1, 6, 6)]
    proxy = quantize_relus(model, data, levels=4, statistic=ThresholdStatistic(scope=scope))
    network = convert(proxy)
    shapes = [tuple(neuron.threshold.shape) for _, neuron in network.neurons()]
    assert shapes == ([(), ()] if scope is ThresholdScope.LAYER else [(3,), (4,)])
    with torch.no_grad():
        assert torch.equal(network(data[0], time_steps=4), proxy(data[0]))


def test_channels_of_small_range_keep_their_resolution():
    """The point of the option: a layer-wide θ set by the widest channel leaves a narrow
    channel below its first level at small T; its own θ gives it all T levels."""
    model = _net(scales=(1.0, 100.0, 1.0))[:2]  # conv → ReLU: the output is the activation map
    data = [torch.randn(64, 1, 6, 6) for _ in range(2)]
    errors = {}
    for scope in ThresholdScope:
        network = convert(model, calibration_data=data,
                          config=ConversionConfig(threshold=ThresholdStatistic(99.9, scope)))
        with torch.no_grad():
            narrow = (network(data[0], time_steps=4) - model(data[0]))[:, [0, 2]]
        errors[scope] = float(narrow.abs().mean())
    assert errors[ThresholdScope.CHANNEL] < 0.25 * errors[ThresholdScope.LAYER]


def test_the_original_activation_clips_each_channel_at_its_threshold():
    threshold = torch.tensor([0.5, 1.0, 2.0])
    x = torch.randn(4, 3, 5, 5) * 3
    expected = torch.stack([x[:, c].clamp(0, float(threshold[c])) for c in range(3)], dim=1)
    assert torch.equal(OriginalActivation(threshold=threshold)(x), expected)


def test_calibration_runs_with_channel_thresholds_and_records_the_scope():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    torch.manual_seed(1)
    batches = [(torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))) for _ in range(6)]
    config = CalibrationConfig(time_steps=2, threshold_scope="channel")
    network, originals = convert_for_calibration(model, batches, config=config)
    (path, neuron), = network.neurons()
    assert neuron.threshold.shape == (4,) and torch.equal(originals[path].threshold, neuron.threshold)
    calibrated = calibrate(model, batches, config=config)
    assert calibrated(batches[0][0], time_steps=2).shape == (8, 3)
    assert config.to_dict()["threshold_scope"] == "channel"
    assert CalibrationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(CalibrationError, match="scope must be one of"):
        CalibrationConfig(threshold_scope="pixel")
    assert ConversionConfig.from_dict({"levels": 8, "percentile": 99.9, "batchnorm": "keep"}).threshold.scope \
        is ThresholdScope.LAYER  # checkpoints written before the option


def test_a_qcfs_layer_takes_one_threshold_per_channel_or_refuses_clearly():
    x = torch.randn(2, 3, 4, 4)
    layer = QCFS(levels=4, threshold=torch.tensor([1.0, 2.0, 3.0]))
    expected = torch.stack([QCFS(levels=4, threshold=t)(x[:, c:c + 1])[:, 0] for c, t in enumerate((1.0, 2.0, 3.0))],
                           dim=1)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)
    assert torch.equal(layer(x.requires_grad_()), expected)  # the differentiable path: the same values
    with pytest.raises(ValueError, match="threshold must be > 0"):
        QCFS(levels=4, threshold=torch.tensor([1.0, 0.0]))


def test_the_command_line_converts_and_reloads_a_network_with_channel_thresholds(tmp_path):
    from parasnn.cli import main
    from parasnn.io.checkpoint import load_snn
    assert main(["train", "--model", "vgg-small", "--dataset", "digits", "--width", "4", "--epochs", "1",
                 "--activation", "relu", "--max-batches", "3", "--device", "cpu", "--out", str(tmp_path / "relu")]) == 0
    out = tmp_path / "snn.pt"
    assert main(["convert", str(tmp_path / "relu" / "model.pt"), "--threshold-scope", "channel", "--device", "cpu",
                 "--out", str(out)]) == 0
    network, _, checkpoint = load_snn(out)
    assert all(neuron.threshold.dim() == 1 and neuron.threshold.numel() > 1 for _, neuron in network.neurons())
    assert checkpoint["config"]["conversion"]["threshold_scope"] == "channel"
    assert main(["evaluate", str(tmp_path / "relu" / "model.pt"), "--snn", str(out), "-T", "2", "--no-activity",
                 "--device", "cpu", "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert {row["form"] for row in report["snn"]} == {"parallel", "serial"}
