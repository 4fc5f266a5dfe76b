"""A QCFS network's start (training/initialisation.py): weights from a ReLU checkpoint, loaded
exactly; thresholds read off the data; one-line errors for a bad or foreign checkpoint."""
import pytest
import torch
from torch import nn

from parasnn.cli import main
from parasnn.io.checkpoint import CheckpointError, save_ann
from parasnn.neurons import QCFS
from parasnn.training.initialisation import initialise_thresholds, load_relu_weights, record_input_ranges
from parasnn.training.train import TrainConfig
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model


def _spec(kind, width=4):
    return ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10,
                     activation=ActivationSpec(kind=kind, levels=4, threshold=8.0), width=width)


def _relu_checkpoint(path, width=4):
    torch.manual_seed(1)
    model = build_model(_spec(ActivationKind.RELU, width))
    with torch.no_grad():  # trained-looking BN statistics, so that every buffer is checked too
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    save_ann(path, model, _spec(ActivationKind.RELU, width))
    return model


def test_init_from_loads_every_weight_exactly_and_leaves_the_thresholds(tmp_path):
    relu = _relu_checkpoint(tmp_path / "relu.pt")
    torch.manual_seed(2)
    qcfs = build_model(_spec(ActivationKind.QCFS))
    load_relu_weights(qcfs, _spec(ActivationKind.QCFS), tmp_path / "relu.pt")
    source, loaded = relu.state_dict(), qcfs.state_dict()
    thresholds = [key for key in loaded if key.endswith(".threshold")]
    assert thresholds and all(float(loaded[key]) == 8.0 for key in thresholds)
    assert set(source) == {key for key in loaded if key not in thresholds and not key.endswith("_extra_state")}
    assert all(torch.equal(source[key], loaded[key]) for key in source)


def test_thresholds_are_the_percentile_of_relu_outputs_and_nothing_else_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), QCFS(levels=4, threshold=8.0), nn.Flatten(),
                          nn.Linear(108, 5), QCFS(levels=4, threshold=8.0)).train()
    batch = torch.randn(16, 1, 8, 8)
    before = {key: value.clone() for key, value in model.state_dict().items() if torch.is_tensor(value)}
    inputs = {}
    hooks = [model[i].register_forward_pre_hook(lambda m, a, i=i: inputs.setdefault(i, a[0].detach()))
             for i in (2, 5)]
    maxima = initialise_thresholds(model, [batch], percentile=100)
    for hook in hooks:
        hook.remove()
    assert maxima == {"2": float(inputs[2].clamp(min=0).max()), "5": float(inputs[5].clamp(min=0).max())}
    assert float(model[2].threshold) == pytest.approx(maxima["2"]) and float(model[5].threshold) == pytest.approx(maxima["5"])
    # The median of ReLU(x), one batch: the value of rank n/2 among the sorted outputs.
    medians = record_input_ranges(model, [batch], percentile=50)
    values = inputs[2].clamp(min=0).flatten().sort().values
    assert medians["2"] == max(float(values[values.numel() // 2 - 1]), 1e-3)
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before if not key.endswith(".threshold"))


def test_a_bad_or_foreign_checkpoint_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    qcfs = build_model(_spec(ActivationKind.QCFS))
    with pytest.raises(CheckpointError) as error:
        load_relu_weights(qcfs, _spec(ActivationKind.QCFS), tmp_path / "junk.pt")
    assert "junk.pt" in str(error.value) and "\n" not in str(error.value)
    _relu_checkpoint(tmp_path / "wide.pt", width=8)
    with pytest.raises(CheckpointError, match=r"another architecture: width 8 \(--init-from\) vs 4"):
        load_relu_weights(qcfs, _spec(ActivationKind.QCFS), tmp_path / "wide.pt")
    # Through the command line: one line naming the file, nothing written.
    code = main(["train", "--dataset", "digits", "--model", "vgg-small", "--width", "4", "--epochs", "1",
                 "--init-from", str(tmp_path / "wide.pt"), "--device", "cpu", "--out", str(tmp_path / "run")])
    message = capsys.readouterr().err.strip()
    assert code != 0 and "wide.pt" in message and "width" in message and "\n" not in message
    assert not (tmp_path / "run" / "model.pt").exists()


def test_threshold_percentile_is_for_qcfs_and_init_from_defaults_it():
    with pytest.raises(ValueError, match="--activation qcfs"):
        TrainConfig(activation="relu", threshold_percentile=99.0)
    assert TrainConfig(init_from="relu.pt").threshold_percentile == 99.9
    assert "init_from" not in TrainConfig().to_dict()  # runs recorded before the option still resume
