"""Checkpoints: round trips, and clear errors for damaged or wrong files."""
import pytest
import torch

from parasnn.io.checkpoint import CheckpointError, load_ann, load_snn, read_checkpoint, save_ann, save_snn
from parasnn.conversion.stages import ConversionConfig, convert
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model


def _spec(kind=ActivationKind.QCFS):
    return ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                     activation=ActivationSpec(kind=kind, levels=(2, 3, 4, 5, 6, 7, 8), threshold=1.5))


def test_ann_round_trip_restores_weights_and_per_site_levels(tmp_path):
    spec = _spec()
    model = build_model(spec).eval()
    save_ann(tmp_path / "a.pt", model, spec, config={"seed": 3})
    loaded, loaded_spec, data = load_ann(tmp_path / "a.pt")
    assert loaded_spec == spec and data["config"] == {"seed": 3}
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves nothing behind


@pytest.mark.parametrize("kind", [ActivationKind.QCFS, ActivationKind.RELU])
def test_snn_round_trip_including_per_channel_calibration_terms(tmp_path, kind):
    spec = _spec(kind)
    model = build_model(spec).eval()
    data = [torch.randn(16, 1, 8, 8)] if kind is ActivationKind.RELU else None
    network = convert(model, calibration_data=data, config=ConversionConfig())
    # Calibration makes neuron terms per-channel; a fresh skeleton must still load them.
    path, neuron = next(iter(network.neurons()))
    channels = 4
    neuron.pre_shift = torch.linspace(-0.1, 0.1, channels)
    neuron.temporal_bias = torch.nn.Parameter(torch.linspace(0, 0.2, channels))
    save_snn(tmp_path / "s.pt", network, spec, from_relu=kind is ActivationKind.RELU)
    loaded, _, _ = load_snn(tmp_path / "s.pt")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, time_steps=3), network(x, time_steps=3))


def test_damaged_and_wrong_files_give_clear_errors(tmp_path):
    spec = _spec()
    save_ann(tmp_path / "good.pt", build_model(spec), spec)
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    cases = {
        "missing.pt": "does not exist",
        "truncated.pt": "corrupt or truncated",
        "noise.pt": "corrupt or truncated",
        "plain.pt": "not a parasnn checkpoint",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as error:
            read_checkpoint(tmp_path / name)
        assert name in str(error.value)
    with pytest.raises(CheckpointError, match="expected a converted network"):
        load_snn(tmp_path / "good.pt")
    # Weights that do not fit the recorded architecture.
    data = torch.load(tmp_path / "good.pt", weights_only=True)
    data["state_dict"].pop(next(iter(data["state_dict"])))
    torch.save(data, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_ann(tmp_path / "mismatch.pt")
