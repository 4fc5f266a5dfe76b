"""The model zoo: the ANNs this library trains and converts, described by a :class:`ModelSpec`.

A :class:`ModelSpec` names an architecture (one of :data:`MODEL_NAMES`), the input shape,
the number of classes, an optional base width and an :class:`ActivationSpec` — ReLU, or
QCFS with one quantization level L for every activation or one L per activation site.
:func:`build_model` turns a spec into a plain ``nn.Module``; a spec survives a JSON round
trip (:meth:`ModelSpec.to_dict` / :meth:`ModelSpec.from_dict`), so a checkpoint can carry
the recipe of its own network.

==============  =============================================  ===============  ===============
name            architecture                                   default width    activation sites
==============  =============================================  ===============  ===============
``vgg16``       CIFAR VGG-16 with BN and average pooling        64               13 + 2 = 15
``vgg-small``   6-conv VGG for 28×28 grey images               32               6 + 1 = 7
``resnet18``    CIFAR-style ResNet-18, BasicBlocks [2,2,2,2]     64               1 + 8·2 = 17
``resnet20``    CIFAR ResNet-20, BasicBlocks [3,3,3]             16               1 + 9·2 = 19
``resnet34``    CIFAR-style ResNet-34, BasicBlocks [3,4,6,3]     64               1 + 16·2 = 33
==============  =============================================  ===============  ===============

Conventions every architecture keeps, because the converter relies on them:

* every activation is its own module instance, created in forward order (the ``index``-th
  call of the activation factory is the ``index``-th activation the input passes through),
  so per-site quantization levels and per-layer thresholds mean what they say;
* activations, pooling and flattening are modules (no ``torch.nn.functional`` calls), and
  ``forward`` has no data-dependent Python control flow: ``torch.fx.symbolic_trace`` works;
* pooling is average pooling (a linear map, which a spiking network computes exactly on
  rates; max-pooling of spike rates is not);
* convolutions feeding a BatchNorm have no bias (the BN shift supersedes it).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from ..neurons.base import ActivationQuantizer
from ..neurons.qcfs import QCFS

__all__ = [
    "ActivationKind", "ActivationSpec", "ModelSpec", "MODEL_NAMES", "DEFAULT_WIDTHS",
    "build_model", "count_activation_sites",
    "VGG", "BasicBlock", "ResNet",
    "VGG16_CONFIG", "VGG_SMALL_CONFIG",
]

# A zero-argument callable that returns a fresh activation module on every call.
ActivationFactory = Callable[[], nn.Module]

POOL = "A"  # marks a 2×2 average-pooling stage in a VGG configuration

# Simonyan & Zisserman (2015), configuration D, as used on CIFAR by QCFS (Bu et al., 2022) and
# FS-PC (Hao et al., 2025): channel counts for width 64, POOL = AvgPool2d(2).
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                                       512, 512, 512, POOL, 512, 512, 512, POOL)
# The small VGG for Fashion-MNIST, channel counts for width 32.
VGG_SMALL_CONFIG: tuple[int | str, ...] = (32, 32, POOL, 64, 64, POOL, 128, 128, POOL)

RESNET20_BLOCKS = (3, 3, 3)
RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET34_BLOCKS = (3, 4, 6, 3)


# --------------------------------------------------------------------------- activation spec


class ActivationKind(str, enum.Enum):
    """Which activation the ANN uses: plain ReLU (converted training-free) or QCFS."""

    RELU = "relu"
    QCFS = "qcfs"
    # PMSM (paper 001): the signed clip clip(x, −r, r) with r = ``threshold`` (learnt), trained
    # in full precision; ``parasnn pmsm`` quantizes it to ``levels`` levels per polarity.
    SIGNED = "signed"


def _check_level(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ActivationSpec: every level must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class ActivationSpec:
    """How to build the activation at each activation site of a model.

    Args:
        kind: :class:`ActivationKind` (or its string value).
        levels: QCFS quantization levels L — one integer for every site, or a tuple with one
            L per activation site in forward order (its length must equal the model's number
            of sites; :func:`build_model` checks). A list is accepted and stored as a tuple.
            Ignored by ReLU (but still validated).
        threshold: initial QCFS threshold θ (learnable afterwards). Ignored by ReLU.
    """

    kind: ActivationKind = ActivationKind.QCFS
    levels: int | tuple[int, ...] = 4
    threshold: float = 8.0

    def __post_init__(self):
        # Normalise what JSON hands back (strings, lists) so equal specs compare equal.
        try:
            kind = ActivationKind(self.kind)
        except ValueError:
            choices = ", ".join(repr(k.value) for k in ActivationKind)
            raise ValueError(f"ActivationSpec: kind must be one of {choices}, got {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        if isinstance(self.levels, (list, tuple)):
            if len(self.levels) == 0:
                raise ValueError("ActivationSpec: levels tuple must not be empty")
            object.__setattr__(self, "levels", tuple(_check_level(level) for level in self.levels))
        else:
            _check_level(self.levels)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold < float("inf"):
            raise ValueError(f"ActivationSpec: threshold must be a finite number > 0, got {self.threshold!r}")
        object.__setattr__(self, "threshold", float(self.threshold))

    def levels_at(self, index: int) -> int:
        """Quantization level L of the ``index``-th activation site (0-based, forward order)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"ActivationSpec: site index must be an integer >= 0, got {index!r}")
        if isinstance(self.levels, int):
            return self.levels
        if index >= len(self.levels):
            raise ValueError(f"ActivationSpec: levels has {len(self.levels)} entries, "
                             f"no level for activation site {index}")
        return self.levels[index]

    def make(self, index: int) -> nn.Module:
        """A new activation module for the ``index``-th activation site (0-based, forward order)."""
        levels = self.levels_at(index)
        if self.kind is ActivationKind.RELU:
            # Not in place: the converter and the tests hook activation inputs and outputs.
            return nn.ReLU(inplace=False)
        if self.kind is ActivationKind.SIGNED:
            from ..neurons.pmsm import PolarityQuantizer  # its full-precision form, range [−r, r]
            return PolarityQuantizer(levels=levels, scale=self.threshold, quantized=False)
        return QCFS(levels=levels, threshold=self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``kind`` as its string, tuple ``levels`` as a list."""
        levels = list(self.levels) if isinstance(self.levels, tuple) else self.levels
        return {"kind": self.kind.value, "levels": levels, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActivationSpec:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are an error."""
        _check_keys(data, allowed={"kind", "levels", "threshold"}, owner=cls.__name__)
        return cls(**dict(data))


def _check_keys(data: Mapping[str, Any], *, allowed: set[str], owner: str) -> None:
    # A typo in a hand-written config must not silently fall back to a default.
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{owner}.from_dict: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")


class _ActivationSites:
    """Hands out the activations of one model in forward order and counts them."""

    def __init__(self, spec: ActivationSpec):
        self.spec = spec
        self.count = 0

    def new(self) -> nn.Module:
        module = self.spec.make(self.count)
        self.count += 1
        return module


# --------------------------------------------------------------------------- weight init


def _initialise(model: nn.Module) -> None:
    """He et al. (2015) initialisation for the ReLU-like activations used here.

    Convolutions: Kaiming normal, fan-out (torchvision's choice for VGG and ResNet);
    linear layers: Kaiming normal, fan-in, so hidden classifier layers keep the signal's
    scale; biases 0; BatchNorm weight 1, bias 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                    for s in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive integers, got {input_shape!r}")
    return tuple(input_shape)


# --------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    """VGG-style network: conv3×3-BN-activation blocks, 2×2 average pooling, MLP classifier.

    VGG is Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition" (ICLR 2015). The CIFAR form used by the conversion literature — BatchNorm
    after every convolution, average instead of max pooling, a 4096-4096 classifier on the
    flattened features — follows QCFS (Bu et al., "Optimal ANN-SNN Conversion for
    High-accuracy and Low-latency Spiking Neural Networks", ICLR 2022) and FS-PC (Hao et al.,
    ICML 2025).

    The network is sized by its input: a pooling stage is skipped when it would shrink a
    spatial side below 1 (a 28×28 input keeps 4 of VGG-16's 5 poolings, 28→14→7→3→1), and
    the classifier's input features are computed from the resulting feature map.

    Args:
        config: channel counts and :data:`POOL` markers, in order.
        input_shape: ``(C, H, W)`` of one input image.
        num_classes: outputs of the last linear layer.
        hidden_features: widths of the hidden classifier layers; each is
            Linear → activation → Dropout.
        dropout: dropout probability after each hidden classifier activation.
        new_activation: returns a fresh activation module per call (default: ``nn.ReLU``).
    """

    def __init__(self, *, config: tuple[int | str, ...], input_shape: tuple[int, int, int],
                 num_classes: int, hidden_features: tuple[int, ...], dropout: float = 0.5,
                 new_activation: ActivationFactory | None = None):
        super().__init__()
        new_activation = new_activation or nn.ReLU
        channels, height, width = _check_input_shape(input_shape)

        layers: list[nn.Module] = []
        for entry in config:
            if entry == POOL:
                if height // 2 < 1 or width // 2 < 1:
                    continue  # the input is too small for this stage: skip it
                layers.append(nn.AvgPool2d(2))
                height, width = height // 2, width // 2  # (B, C, H, W) -> (B, C, H/2, W/2), floored
            else:
                layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1, bias=False),
                           nn.BatchNorm2d(entry),
                           new_activation()]  # (B, C, H, W) -> (B, entry, H, W)
                channels = entry
        self.features = nn.Sequential(*layers)

        in_features = channels * height * width
        head: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C·H·W)
        for hidden in hidden_features:
            head += [nn.Linear(in_features, hidden), new_activation(), nn.Dropout(dropout)]
            in_features = hidden
        head.append(nn.Linear(in_features, num_classes))  # (B, hidden) -> (B, num_classes)
        self.classifier = nn.Sequential(*head)
        _initialise(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(x)


def _scaled_config(config: tuple[int | str, ...], *, base: int, width: int) -> tuple[int | str, ...]:
    # Channel counts in the configs are multiples of the first stage's width (base), so
    # scaling by width/base keeps integer ratios 1:2:4:8.
    return tuple(entry if entry == POOL else entry // base * width for entry in config)


def vgg16(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
          new_activation: ActivationFactory | None = None) -> VGG:
    """CIFAR VGG-16 (QCFS / FS-PC form), see :class:`VGG`.

    ``width`` is the first stage's channel count (default 64, stages 64-128-256-512-512);
    the two hidden classifier layers have ``64·width`` features (4096 at the default).
    Dropout 0.5 after each hidden activation, as in Simonyan & Zisserman.
    """
    return VGG(config=_scaled_config(VGG16_CONFIG, base=64, width=width), input_shape=input_shape,
               num_classes=num_classes, hidden_features=(64 * width, 64 * width), dropout=0.5,
               new_activation=new_activation)


def vgg_small(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 32,
              new_activation: ActivationFactory | None = None) -> VGG:
    """Small VGG for 28×28 grey images (Fashion-MNIST), this project's own reduced VGG.

    [w, w, A, 2w, 2w, A, 4w, 4w, A] conv3×3-BN-activation blocks (A = AvgPool2d(2)), then
    Flatten → Linear(4w·3·3, 8w) → activation → Dropout(0.2) → Linear(8w, classes).
    ``width`` w defaults to 32 (about 0.58 M parameters, 29 M multiply-accumulates per
    28×28 image).
    """
    return VGG(config=_scaled_config(VGG_SMALL_CONFIG, base=32, width=width), input_shape=input_shape,
               num_classes=num_classes, hidden_features=(8 * width,), dropout=0.2,
               new_activation=new_activation)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016):
    conv3×3-BN-act-conv3×3-BN, plus the shortcut, then act.

    The shortcut is the identity when the shape is kept and otherwise the paper's option B,
    a projection ``conv1×1(stride)-BN``. The activation after the addition is its own module.
    """

    def __init__(self, *, in_channels: int, out_channels: int, stride: int,
                 new_activation: ActivationFactory | None = None):
        super().__init__()
        new_activation = new_activation or nn.ReLU
        # (B, in, H, W) -> (B, out, H/stride, W/stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = new_activation()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = new_activation()  # created after act1: forward order

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of :class:`BasicBlock` stages (He et al., CVPR 2016).

    Stem conv3×3 (stride 1, no max-pool) - BN - act; stage ``i`` has ``blocks_per_stage[i]``
    blocks of ``widths[i]`` channels, the first block of every stage but the first
    downsampling by stride 2; then global average pooling, Flatten, Linear.

    Args:
        blocks_per_stage: e.g. ``(3, 3, 3)`` for ResNet-20, ``(2, 2, 2, 2)`` for ResNet-18.
        widths: channels per stage; the stem has ``widths[0]``.
        input_shape: ``(C, H, W)`` of one input image (C sets the stem's input channels).
        num_classes: outputs of the last linear layer.
        new_activation: returns a fresh activation module per call (default: ``nn.ReLU``).
    """

    def __init__(self, *, blocks_per_stage: tuple[int, ...], widths: tuple[int, ...],
                 input_shape: tuple[int, int, int], num_classes: int,
                 new_activation: ActivationFactory | None = None):
        super().__init__()
        if len(blocks_per_stage) != len(widths):
            raise ValueError(f"ResNet: {len(blocks_per_stage)} stages but {len(widths)} widths")
        new_activation = new_activation or nn.ReLU
        in_channels, _, _ = _check_input_shape(input_shape)

        self.stem = nn.Sequential(  # (B, C, H, W) -> (B, widths[0], H, W)
            nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            new_activation(),
        )
        stages: list[nn.Module] = []
        channels = widths[0]
        for index, (blocks, stage_width) in enumerate(zip(blocks_per_stage, widths)):
            stride = 1 if index == 0 else 2  # (B, C, H, W) -> (B, stage_width, H/2, W/2) from stage 2 on
            stage = []
            for block in range(blocks):
                stage.append(BasicBlock(in_channels=channels, out_channels=stage_width,
                                        stride=stride if block == 0 else 1, new_activation=new_activation))
                channels = stage_width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)  # (B, C, H, W) -> (B, C, 1, 1)
        self.flatten = nn.Flatten()          # (B, C, 1, 1) -> (B, C)
        self.fc = nn.Linear(channels, num_classes)
        _initialise(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = self.flatten(self.pool(x))
        return self.fc(x)


def resnet20(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 16,
             new_activation: ActivationFactory | None = None) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016, §4.2, n = 3) with option-B shortcuts; stages
    ``width``, ``2·width``, ``4·width`` channels (default 16-32-64)."""
    return ResNet(blocks_per_stage=RESNET20_BLOCKS, widths=(width, 2 * width, 4 * width),
                  input_shape=input_shape, num_classes=num_classes, new_activation=new_activation)


def resnet18(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
             new_activation: ActivationFactory | None = None) -> ResNet:
    """ResNet-18 (He et al. 2016, Table 1) in the CIFAR form: 3×3 stride-1 stem, no
    max-pool; stages ``width·(1, 2, 4, 8)`` channels (default 64-128-256-512)."""
    return ResNet(blocks_per_stage=RESNET18_BLOCKS, widths=(width, 2 * width, 4 * width, 8 * width),
                  input_shape=input_shape, num_classes=num_classes, new_activation=new_activation)


def resnet34(*, input_shape: tuple[int, int, int], num_classes: int, width: int = 64,
             new_activation: ActivationFactory | None = None) -> ResNet:
    """ResNet-34 (He et al. 2016, Table 1) in the CIFAR form: 3×3 stride-1 stem, no
    max-pool; stages ``width·(1, 2, 4, 8)`` channels (default 64-128-256-512)."""
    return ResNet(blocks_per_stage=RESNET34_BLOCKS, widths=(width, 2 * width, 4 * width, 8 * width),
                  input_shape=input_shape, num_classes=num_classes, new_activation=new_activation)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Architecture:
    build: Callable[..., nn.Module]
    default_width: int
    activation_sites: int  # independent of width and input shape


def _vgg_sites(config: tuple[int | str, ...], *, hidden_layers: int) -> int:
    # One activation per convolution (a pooling stage skipped for small inputs has none)
    # plus one per hidden classifier layer.
    return sum(entry != POOL for entry in config) + hidden_layers


def _resnet_sites(blocks_per_stage: tuple[int, ...]) -> int:
    return 1 + 2 * sum(blocks_per_stage)  # the stem's, then two per BasicBlock


_ARCHITECTURES: dict[str, _Architecture] = {
    "vgg16": _Architecture(vgg16, 64, _vgg_sites(VGG16_CONFIG, hidden_layers=2)),
    "vgg-small": _Architecture(vgg_small, 32, _vgg_sites(VGG_SMALL_CONFIG, hidden_layers=1)),
    "resnet18": _Architecture(resnet18, 64, _resnet_sites(RESNET18_BLOCKS)),
    "resnet20": _Architecture(resnet20, 16, _resnet_sites(RESNET20_BLOCKS)),
    "resnet34": _Architecture(resnet34, 64, _resnet_sites(RESNET34_BLOCKS)),
}

MODEL_NAMES: tuple[str, ...] = ("vgg16", "vgg-small", "resnet18", "resnet20", "resnet34")
DEFAULT_WIDTHS: dict[str, int] = {name: _ARCHITECTURES[name].default_width for name in MODEL_NAMES}


def _architecture(name: str) -> _Architecture:
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _ARCHITECTURES[name]


# --------------------------------------------------------------------------- model spec


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: architecture, input, classes, activation.

    Args:
        name: one of :data:`MODEL_NAMES`.
        input_shape: ``(C, H, W)`` of one input image (a list is accepted).
        num_classes: number of outputs.
        activation: what each activation site is.
        width: base width (first stage's channels) or ``None`` for the architecture's
            default, :data:`DEFAULT_WIDTHS`.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    activation: ActivationSpec
    width: int | None = None

    def __post_init__(self):
        _architecture(self.name)  # fail at the spec, not later at build time
        object.__setattr__(self, "input_shape", _check_input_shape(tuple(self.input_shape)))
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"ModelSpec: num_classes must be an integer >= 1, got {self.num_classes!r}")
        if not isinstance(self.activation, ActivationSpec):
            raise TypeError(f"ModelSpec: activation must be an ActivationSpec, got {type(self.activation).__name__}")
        if self.width is not None and (isinstance(self.width, bool) or not isinstance(self.width, int)
                                       or self.width < 1):
            raise ValueError(f"ModelSpec: width must be None or an integer >= 1, got {self.width!r}")

    @property
    def resolved_width(self) -> int:
        """The base width the model is built with (``width`` or the default)."""
        return self.width if self.width is not None else _architecture(self.name).default_width

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (enums as strings, tuples as lists)."""
        return {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "activation": self.activation.to_dict(), "width": self.width}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; ``width`` may be missing, unknown keys are an error."""
        _check_keys(data, allowed={"name", "input_shape", "num_classes", "activation", "width"},
                    owner=cls.__name__)
        fields = dict(data)
        activation = fields.get("activation")
        if isinstance(activation, Mapping):
            fields["activation"] = ActivationSpec.from_dict(activation)
        return cls(**fields)


def count_activation_sites(spec_or_model: ModelSpec | nn.Module) -> int:
    """Number of activation sites.

    For a :class:`ModelSpec`, the architecture's count (it does not depend on width or input
    shape). For a module, the number of distinct ``nn.ReLU`` / :class:`QCFS` modules in it —
    equal to the number of call sites for every model :func:`build_model` makes, because
    those never reuse an activation module.
    """
    if isinstance(spec_or_model, ModelSpec):
        return _architecture(spec_or_model.name).activation_sites
    if isinstance(spec_or_model, nn.Module):
        return sum(isinstance(module, (nn.ReLU, ActivationQuantizer)) for module in spec_or_model.modules())
    raise TypeError(f"count_activation_sites: expected a ModelSpec or nn.Module, "
                    f"got {type(spec_or_model).__name__}")


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the (freshly initialised) network a :class:`ModelSpec` describes.

    Raises ``ValueError`` if ``spec.activation.levels`` is a tuple whose length is not the
    model's number of activation sites.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"build_model: expected a ModelSpec, got {type(spec).__name__}")
    architecture = _architecture(spec.name)
    expected = architecture.activation_sites
    levels = spec.activation.levels
    if isinstance(levels, tuple) and len(levels) != expected:
        raise ValueError(f"{spec.name} has {expected} activation sites, but activation.levels has "
                         f"{len(levels)} entries; give one level per site or a single integer")
    sites = _ActivationSites(spec.activation)
    model = architecture.build(input_shape=spec.input_shape, num_classes=spec.num_classes,
                               width=spec.resolved_width, new_activation=sites.new)
    if sites.count != expected:  # the registry's count and the architecture disagree: a bug here
        raise RuntimeError(f"{spec.name}: built {sites.count} activation sites, registry says {expected}")
    return model
