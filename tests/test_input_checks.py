"""The API checks what it is given like the CLI does: a function instead of a model, wrong
input count, dtype, device, rank, channels or size, NaN inputs in every form, absurd T."""
import pytest
import torch
from torch import nn

from parasnn.conversion.graph import ConversionError
from parasnn.conversion.network import MAX_TIME_STEPS
from parasnn.conversion.stages import convert
from parasnn.simulation.forms import (parallel_forward, serial_forward, serial_outputs, serial_step,
                                      spike_counts)
from parasnn.zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model

SPEC = ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                 activation=ActivationSpec(kind=ActivationKind.QCFS, levels=4, threshold=1.5))


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return convert(build_model(SPEC).eval())


def _serial_step(net, *inputs, time_steps):
    return serial_step(net, {}, *inputs, time_steps=time_steps)[1]


FORMS = [parallel_forward, serial_forward, serial_outputs, _serial_step, spike_counts]


def test_convert_of_a_function_is_a_conversion_error():
    with pytest.raises(ConversionError, match="expected a torch.nn.Module, got function"):
        convert(lambda x: x)


def test_nan_calibration_data_names_the_layer():
    relu = build_model(ModelSpec(name="vgg-small", input_shape=(1, 8, 8), num_classes=10, width=4,
                                 activation=ActivationSpec(kind=ActivationKind.RELU)))
    for percentile_data in ([torch.full((4, 1, 8, 8), float("nan"))],):
        with pytest.raises(ConversionError, match=r"activation \S+ sees NaN or infinite values"):
            convert(relu, calibration_data=percentile_data)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.__name__)
def test_every_form_checks_its_input_the_same_way(network, form):
    x = torch.randn(2, 1, 8, 8)
    form(network, x, time_steps=2)  # the good input runs
    cases = [
        ((x, x), TypeError, "takes 1 input tensor\\(s\\), got 2"),
        ((), TypeError, "takes 1 input tensor\\(s\\), got 0"),
        ((torch.full_like(x, float("nan")),), ValueError, "NaN or infinite"),
        ((x.long(),), ValueError, "dtype torch.int64"),
        ((x.double(),), ValueError, "x.to\\(torch.float32\\)"),
        ((torch.randn(2, 3, 8, 8),), ValueError, "expects \\(B, 1, H, W\\)"),
        ((torch.randn(1, 8, 8),), ValueError, "has shape \\(1, 8, 8\\); the network expects \\(B, 1, H, W\\)"),
    ]
    for inputs, error, message in cases:
        with pytest.raises(error, match=message):
            form(network, *inputs, time_steps=2)
    for steps in (0, 2**64, MAX_TIME_STEPS + 1, 2.0, True):
        with pytest.raises(ValueError, match="time_steps"):
            form(network, x, time_steps=steps)


def test_a_recorded_input_shape_names_the_image_size(network):
    import copy
    loaded = copy.deepcopy(network)
    loaded.input_shape = (1, 8, 8)  # as load_snn records it
    with pytest.raises(ValueError, match=r"has shape \(2, 1, 16, 16\); the network expects \(B, 1, 8, 8\)"):
        loaded(torch.randn(2, 1, 16, 16), time_steps=2)
    with pytest.raises(ValueError, match=r"expects \(B, 1, 8, 8\)"):
        serial_forward(loaded, torch.randn(2, 1, 16, 16), time_steps=2)


def test_a_linear_first_layer_checks_the_feature_count():
    net = convert(nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)), calibration_data=[torch.randn(8, 5)])
    assert net(torch.randn(4, 5), time_steps=2).shape == (4, 2)
    with pytest.raises(ValueError, match=r"has shape \(4, 6\); the network expects \(\.\.\., 5\)"):
        net(torch.randn(4, 6), time_steps=2)


def test_an_image_size_the_network_was_not_converted_for_is_a_value_error(network):
    """Without a recorded input_shape (convert() of a module), the size is known only when a
    layer fails; the error still states the input shape and the fix."""
    assert network.input_shape is None
    for form in (parallel_forward, serial_forward, _serial_step):
        with pytest.raises(ValueError, match=r"cannot take input\(s\) of shape \(2, 1, 16, 16\).*converted for"):
            form(network, torch.randn(2, 1, 16, 16), time_steps=2)
