"""The model zoo (parasnn.zoo.models): shapes, activation sites, tracing, specs."""
from __future__ import annotations

import json
import re

import pytest
import torch
import torch.fx
from torch import nn

from parasnn.zoo.models import (DEFAULT_WIDTHS, MODEL_NAMES, ActivationKind, ActivationSpec, ModelSpec,
                            build_model, count_activation_sites)
from parasnn.zoo.spec import architecture
from parasnn.neurons import QCFS, ActivationQuantizer

# Written out by hand (not read from the module) so a wrong registry or architecture fails.
EXPECTED_SITES = {"vgg16": 13 + 2, "vgg-small": 6 + 1, "resnet18": 1 + 8 * 2, "resnet20": 1 + 9 * 2,
                  "resnet34": 1 + 16 * 2, "vit-tiny": 4}
# The architectures that take QCFS / ReLU activations (the CNNs); vit-tiny takes GELU only.
QCFS_NAMES = [name for name in MODEL_NAMES if ActivationKind.QCFS in architecture(name).activations]
NAME_KINDS = [(name, kind) for name in MODEL_NAMES for kind in architecture(name).activations]
SHAPES = [(1, 28, 28), (3, 32, 32)]
SMALL_WIDTH = 4  # keeps every model tiny so the whole file runs in seconds


def small_spec(name: str, *, input_shape=(3, 32, 32), num_classes: int = 7,
               activation: ActivationSpec | None = None) -> ModelSpec:
    return ModelSpec(name=name, input_shape=input_shape, num_classes=num_classes,
                     activation=activation or ActivationSpec(kind=architecture(name).default_activation),
                     width=SMALL_WIDTH)


def activation_calls(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Activation modules in the order the forward pass calls them (one entry per call)."""
    calls: list[nn.Module] = []
    handles = [module.register_forward_hook(lambda module, inputs, output: calls.append(module))
               for module in model.modules() if isinstance(module, (nn.ReLU, nn.GELU, ActivationQuantizer))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def test_expected_sites_cover_every_model_name():
    assert set(EXPECTED_SITES) == set(MODEL_NAMES)


@pytest.mark.parametrize("input_shape", SHAPES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builds_and_gives_logits_and_traces(name, input_shape):
    torch.manual_seed(0)
    model = build_model(small_spec(name, input_shape=input_shape, num_classes=7)).eval()
    x = torch.randn(2, *input_shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_activation_site_count(name):
    spec = small_spec(name)
    model = build_model(spec)
    assert count_activation_sites(spec) == EXPECTED_SITES[name]
    assert count_activation_sites(model) == EXPECTED_SITES[name]
    assert len(activation_calls(model.eval(), torch.randn(1, 3, 32, 32))) == EXPECTED_SITES[name]


@pytest.mark.parametrize("name, kind", NAME_KINDS)
def test_no_activation_module_is_called_twice(name, kind):
    model = build_model(small_spec(name, activation=ActivationSpec(kind=kind))).eval()
    calls = activation_calls(model, torch.randn(1, 3, 32, 32))
    assert len(calls) == EXPECTED_SITES[name]
    assert len({id(module) for module in calls}) == len(calls), "an activation module is reused"


@pytest.mark.parametrize("input_shape", SHAPES)
@pytest.mark.parametrize("name", QCFS_NAMES)
def test_per_site_levels_follow_forward_order(name, input_shape):
    sites = EXPECTED_SITES[name]
    levels = tuple(range(1, sites + 1))  # all distinct, so any permutation is caught
    spec = small_spec(name, input_shape=input_shape,
                      activation=ActivationSpec(kind=ActivationKind.QCFS, levels=levels, threshold=3.0))
    model = build_model(spec).eval()
    calls = activation_calls(model, torch.randn(1, *input_shape))
    assert all(isinstance(module, QCFS) for module in calls)
    assert tuple(module.levels for module in calls) == levels
    assert all(module.threshold.item() == 3.0 for module in calls)


def test_single_integer_levels_apply_to_every_site():
    model = build_model(small_spec("resnet20", activation=ActivationSpec(levels=6)))
    qcfs = [module for module in model.modules() if isinstance(module, QCFS)]
    assert len(qcfs) == EXPECTED_SITES["resnet20"]
    assert {module.levels for module in qcfs} == {6}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("offset", [-1, 1])
def test_wrong_length_levels_tuple_names_the_site_count(name, offset):
    sites = EXPECTED_SITES[name]
    spec = small_spec(name, activation=ActivationSpec(kind=architecture(name).default_activation,
                                                      levels=(4,) * (sites + offset)))
    with pytest.raises(ValueError, match=rf"\b{sites} activation sites"):
        build_model(spec)


@pytest.mark.parametrize("name", QCFS_NAMES)
def test_relu_kind_gives_only_relu(name):
    model = build_model(small_spec(name, activation=ActivationSpec(kind=ActivationKind.RELU)))
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    assert len(relus) == EXPECTED_SITES[name]
    assert not any(isinstance(module, QCFS) for module in model.modules())
    assert not any(module.inplace for module in relus)


def test_relu_kind_accepts_its_string_value():
    assert ActivationSpec(kind="relu").kind is ActivationKind.RELU
    assert isinstance(ActivationSpec(kind="relu").make(0), nn.ReLU)


def test_activation_spec_make():
    spec = ActivationSpec(kind=ActivationKind.QCFS, levels=(2, 5), threshold=1.5)
    first, second = spec.make(0), spec.make(1)
    assert isinstance(first, QCFS) and isinstance(second, QCFS)
    assert (first.levels, second.levels) == (2, 5)
    assert first.threshold.item() == 1.5
    assert first is not spec.make(0)  # a fresh module every call
    with pytest.raises(ValueError, match="2 entries"):
        spec.make(2)


@pytest.mark.parametrize("bad", [dict(kind="swish"), dict(levels=0), dict(levels=()), dict(levels=(4, 0)),
                                 dict(levels=2.5), dict(levels=True), dict(threshold=0.0),
                                 dict(threshold=float("inf"))])
def test_activation_spec_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ActivationSpec(**bad)


@pytest.mark.parametrize("spec", [
    ModelSpec(name="resnet20", input_shape=(3, 32, 32), num_classes=10, activation=ActivationSpec()),
    ModelSpec(name="vgg-small", input_shape=(1, 28, 28), num_classes=10, width=8,
              activation=ActivationSpec(kind=ActivationKind.QCFS, levels=(2, 3, 4, 5, 6, 7, 8), threshold=4.5)),
    ModelSpec(name="vgg16", input_shape=(3, 64, 64), num_classes=200,
              activation=ActivationSpec(kind=ActivationKind.RELU)),
])
def test_model_spec_round_trip(spec):
    data = spec.to_dict()
    text = json.dumps(data)  # must be JSON-serialisable as it is
    restored = ModelSpec.from_dict(json.loads(text))
    assert restored == spec
    assert isinstance(restored.activation.kind, ActivationKind)
    assert isinstance(restored.input_shape, tuple)
    assert type(restored.activation.levels) is type(spec.activation.levels)
    assert data["activation"]["kind"] == spec.activation.kind.value


def test_model_spec_to_dict_uses_plain_types():
    spec = ModelSpec(name="vgg-small", input_shape=(1, 28, 28), num_classes=10,
                     activation=ActivationSpec(levels=(1, 2, 3, 4, 5, 6, 7)))
    assert spec.to_dict() == {"name": "vgg-small", "input_shape": [1, 28, 28], "num_classes": 10,
                              "activation": {"kind": "qcfs", "levels": [1, 2, 3, 4, 5, 6, 7], "threshold": 8.0},
                              "width": None}


def test_model_spec_from_dict_rejects_unknown_keys():
    data = small_spec("resnet20").to_dict()
    with pytest.raises(ValueError, match="widht"):
        ModelSpec.from_dict({**data, "widht": 3})
    with pytest.raises(ValueError, match="level"):
        ModelSpec.from_dict({**data, "activation": {"kind": "qcfs", "level": 3}})


def test_unknown_model_name_lists_model_names():
    with pytest.raises(ValueError) as error:
        ModelSpec(name="alexnet", input_shape=(3, 32, 32), num_classes=10, activation=ActivationSpec())
    assert "alexnet" in str(error.value)
    assert all(name in str(error.value) for name in MODEL_NAMES)
    with pytest.raises(ValueError, match=re.escape("resnet34")):
        ModelSpec.from_dict({**small_spec("resnet20").to_dict(), "name": "resnet50"})


@pytest.mark.parametrize("bad", [dict(input_shape=(32, 32)), dict(input_shape=(3, 0, 32)),
                                 dict(num_classes=0), dict(width=0)])
def test_model_spec_rejects_bad_values(bad):
    fields = dict(name="resnet20", input_shape=(3, 32, 32), num_classes=10, activation=ActivationSpec())
    with pytest.raises(ValueError):
        ModelSpec(**{**fields, **bad})


# --------------------------------------------------------------------------- architecture details


def layers_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, kind)]


@pytest.mark.parametrize("input_shape, pools, side", [((1, 28, 28), 4, 1), ((3, 32, 32), 5, 1),
                                                      ((3, 64, 64), 5, 2)])
def test_vgg16_pooling_is_sized_by_input(input_shape, pools, side):
    model = build_model(small_spec("vgg16", input_shape=input_shape))
    assert len(layers_of(model, nn.AvgPool2d)) == pools
    assert not layers_of(model, nn.MaxPool2d)
    convs, linears = layers_of(model, nn.Conv2d), layers_of(model, nn.Linear)
    assert len(convs) == 13
    assert [conv.out_channels for conv in convs] == [SMALL_WIDTH * m for m in
                                                     (1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 8)]
    assert convs[0].in_channels == input_shape[0]
    assert [(linear.in_features, linear.out_features) for linear in linears] == [
        (8 * SMALL_WIDTH * side * side, 64 * SMALL_WIDTH), (64 * SMALL_WIDTH, 64 * SMALL_WIDTH),
        (64 * SMALL_WIDTH, 7)]
    assert len(layers_of(model, nn.Dropout)) == 2


def test_vgg_small_default_layout():
    spec = ModelSpec(name="vgg-small", input_shape=(1, 28, 28), num_classes=10, activation=ActivationSpec())
    model = build_model(spec)
    assert [conv.out_channels for conv in layers_of(model, nn.Conv2d)] == [32, 32, 64, 64, 128, 128]
    assert len(layers_of(model, nn.AvgPool2d)) == 3
    assert len(layers_of(model, nn.BatchNorm2d)) == 6
    assert [(linear.in_features, linear.out_features) for linear in layers_of(model, nn.Linear)] == [
        (128 * 3 * 3, 256), (256, 10)]


def test_resnet20_default_layout():
    spec = ModelSpec(name="resnet20", input_shape=(3, 32, 32), num_classes=10, activation=ActivationSpec())
    model = build_model(spec)
    convs = layers_of(model, nn.Conv2d)
    three_by_three = [conv for conv in convs if conv.kernel_size == (3, 3)]
    projections = [conv for conv in convs if conv.kernel_size == (1, 1)]
    assert len(three_by_three) == 1 + 9 * 2
    assert [(conv.in_channels, conv.out_channels, conv.stride) for conv in projections] == [
        (16, 32, (2, 2)), (32, 64, (2, 2))]
    assert three_by_three[0].out_channels == 16 and three_by_three[-1].out_channels == 64
    assert len(layers_of(model, nn.AdaptiveAvgPool2d)) == 1
    assert layers_of(model, nn.Linear)[-1].in_features == 64
    # 0.27 M parameters as in He et al. (plus option-B projections and 19 QCFS thresholds).
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6


@pytest.mark.parametrize("name, blocks", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))])
def test_cifar_resnet_layout(name, blocks):
    model = build_model(small_spec(name, input_shape=(1, 28, 28)))
    stem = model.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (1, SMALL_WIDTH, (3, 3), (1, 1))
    assert not layers_of(model, nn.MaxPool2d)
    assert [len(stage) for stage in model.stages] == list(blocks)
    assert [stage[0].conv1.out_channels for stage in model.stages] == [SMALL_WIDTH * m for m in (1, 2, 4, 8)]


def test_default_widths():
    assert DEFAULT_WIDTHS == {"vgg16": 64, "vgg-small": 32, "resnet18": 64, "resnet20": 16, "resnet34": 64,
                              "vit-tiny": 64}


def test_initialisation():
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="resnet20", input_shape=(3, 32, 32), num_classes=10,
                                  activation=ActivationSpec()))
    for bn in layers_of(model, nn.BatchNorm2d):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    conv = model.stages[2][0].conv2  # 64 -> 64, 3×3: Kaiming fan-out std = sqrt(2 / (64·9))
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def test_count_activation_sites_rejects_other_types():
    with pytest.raises(TypeError):
        count_activation_sites("resnet20")


@pytest.mark.parametrize("kind", [ActivationKind.QCFS, ActivationKind.RELU, ActivationKind.SIGNED])
def test_vit_tiny_takes_gelu_only_and_says_so(kind):
    with pytest.raises(ValueError, match="vit-tiny trains with gelu activations only, not " + kind.value):
        small_spec("vit-tiny", activation=ActivationSpec(kind=kind))
    gelus = layers_of(build_model(small_spec("vit-tiny")), nn.GELU)
    assert len(gelus) == EXPECTED_SITES["vit-tiny"] and len({id(module) for module in gelus}) == len(gelus)


def test_gelu_spec_round_trip():
    spec = small_spec("vit-tiny", input_shape=(1, 28, 28))
    assert spec.activation.kind is ActivationKind.GELU
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
