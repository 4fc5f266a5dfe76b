"""Checkpoint contents are validated: damaged entries, non-finite weights and invalid quantizer
states are one-line CheckpointErrors naming the file and the tensor or module; an SNN names
the ANN it came from (fingerprint)."""
import pytest
import torch

from parasnn.conversion.stages import convert
from parasnn.io.checkpoint import (CheckpointError, ann_fingerprint, check_fits_data, check_snn_matches_ann, load_ann,
                                   load_snn, read_checkpoint, save_ann, save_snn)
from parasnn.neurons.qcfs import QCFS
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model

SPEC = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                 activation=ActivationSpec(kind=ActivationKind.QCFS, levels=4, threshold=1.5))


@pytest.fixture
def good(tmp_path):
    torch.manual_seed(0)
    save_ann(tmp_path / "good.pt", build_model(SPEC), SPEC, config={"dataset": "digits"})
    return tmp_path / "good.pt"


def _variant(good, tmp_path, name, change):
    data = torch.load(good, weights_only=True)
    change(data)
    torch.save(data, tmp_path / name)
    return tmp_path / name


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_a_nan_weight_is_rejected_naming_the_tensor_and_the_file(good, tmp_path):
    def poison(data):
        key = next(k for k, v in data["state_dict"].items() if v.is_floating_point() and v.dim() == 4)
        data["state_dict"][key].view(-1)[3] = float("nan")
        data["poisoned"] = key
    path = _variant(good, tmp_path, "nan.pt", poison)
    key = torch.load(path, weights_only=True)["poisoned"]
    with pytest.raises(CheckpointError) as error:
        load_ann(path)
    assert key in _one_line(error) and "nan.pt" in str(error.value) and "NaN or infinite" in str(error.value)
    path = _variant(good, tmp_path, "inf.pt", lambda d: d["state_dict"][next(iter(d["state_dict"]))].fill_(float("inf")))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_ann(path)


@pytest.mark.parametrize("levels", [0, -3, 2.5, "4", True])
def test_invalid_quantizer_levels_are_rejected_naming_the_module(good, tmp_path, levels):
    def damage(data):
        key = next(k for k in data["state_dict"] if k.endswith("_extra_state"))
        data["state_dict"][key] = {"levels": levels}
        data["module"] = key[: -len("._extra_state")]
    path = _variant(good, tmp_path, "levels.pt", damage)
    module = torch.load(path, weights_only=True)["module"]
    with pytest.raises(CheckpointError) as error:
        load_ann(path)
    assert f"module '{module}'" in _one_line(error) and "levels must be an integer >= 1" in str(error.value)


def test_qcfs_checks_a_loaded_state_like_its_constructor():
    quantizer = QCFS(levels=4, threshold=1.0)
    for bad in (0, -3, 2.5, None):
        with pytest.raises(ValueError, match="levels must be an integer >= 1"):
            quantizer.set_extra_state({"levels": bad})
    with pytest.raises(ValueError, match="extra state must be a dict"):
        quantizer.set_extra_state(7)
    assert quantizer.levels == 4  # unchanged by the refused states
    quantizer.set_extra_state({"levels": 8})
    assert quantizer.levels == 8


@pytest.mark.parametrize("case, message", [
    ("empty", "is empty \\(0 bytes\\)"),
    ("kind 5", "has kind 5"),
    ("config None", "entry 'config' is NoneType"),
    ("model None", "entry 'model' is NoneType"),
    ("state_dict tensor", "entry 'state_dict' is Tensor"),
    ("version 2", "version 2"),
    ("huge input", "values per image"),
    ("a tensor", "not a parasnn checkpoint"),
])
def test_damaged_entries_are_one_line_errors(good, tmp_path, case, message):
    changes = {
        "kind 5": lambda d: d.update(kind=5),
        "config None": lambda d: d.update(config=None),
        "model None": lambda d: d.update(model=None),
        "state_dict tensor": lambda d: d.update(state_dict=torch.zeros(2)),
        "version 2": lambda d: d.update(version=2),
        "huge input": lambda d: d["model"].update(input_shape=[3, 100_000, 100_000]),
    }
    if case == "empty":
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    elif case == "a tensor":
        path = tmp_path / "tensor.pt"
        torch.save(torch.zeros(3), path)
    else:
        path = _variant(good, tmp_path, "damaged.pt", changes[case])
    with pytest.raises(CheckpointError, match=message) as error:
        load_ann(path)
    assert path.name in _one_line(error)


def test_check_fits_data_compares_classes_and_input_shape():
    from parasnn.datasets.data import load_dataset
    pytest.importorskip("sklearn")
    info = load_dataset("digits").info
    check_fits_data(SPEC, info, path="m.pt")
    import dataclasses
    with pytest.raises(CheckpointError, match="predicts 2 classes but the data set digits .* has 10"):
        check_fits_data(dataclasses.replace(SPEC, num_classes=2), info, path="m.pt")
    with pytest.raises(CheckpointError, match=r"takes inputs of shape \(1, 16, 16\).* \(1, 8, 8\)"):
        check_fits_data(dataclasses.replace(SPEC, input_shape=(1, 16, 16)), info, path="m.pt")


def test_an_snn_records_its_anns_fingerprint_and_another_ann_is_refused(good, tmp_path):
    model, spec, checkpoint = load_ann(good)
    fingerprint = ann_fingerprint(checkpoint["state_dict"])
    assert fingerprint == ann_fingerprint(model.state_dict())  # what was loaded is what was saved
    save_snn(tmp_path / "snn.pt", convert(model), spec, from_relu=False, ann_fingerprint=fingerprint)
    network, _, snn = load_snn(tmp_path / "snn.pt")
    assert snn["ann_fingerprint"] == fingerprint and network.input_shape == (1, 8, 8)
    assert check_snn_matches_ann(snn, checkpoint, snn_path="snn.pt", ann_path="good.pt")
    # One changed bit in one weight is another ANN.
    other = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in checkpoint["state_dict"].items()}
    key = next(k for k, v in other.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    other[key].view(-1)[0] = torch.nextafter(other[key].view(-1)[0], torch.tensor(9.0))
    with pytest.raises(CheckpointError, match="was converted from another ANN than other.pt"):
        check_snn_matches_ann(snn, {"state_dict": other}, snn_path="snn.pt", ann_path="other.pt")
    # An SNN without a fingerprint (an older parasnn) cannot be checked: said, not refused.
    del snn["ann_fingerprint"]
    assert check_snn_matches_ann(snn, {"state_dict": other}, snn_path="snn.pt", ann_path="other.pt") is False


def test_an_snn_with_non_finite_terms_is_not_written(good, tmp_path):
    model, spec, _ = load_ann(good)
    network = convert(model)
    _, neuron = next(iter(network.neurons()))
    neuron.temporal_bias = torch.nn.Parameter(torch.full((4,), float("nan")))
    with pytest.raises(CheckpointError, match="temporal_bias"):
        save_snn(tmp_path / "snn.pt", network, spec, from_relu=False)
    assert not (tmp_path / "snn.pt").exists()
    assert read_checkpoint(good)["kind"] == "ann"
