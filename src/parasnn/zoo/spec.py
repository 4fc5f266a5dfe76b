"""What a zoo model is: an :class:`ActivationSpec` (ReLU, or QCFS with its levels L), a
:class:`ModelSpec` (architecture name, input, classes, width, activation) and the registry
of architectures that :func:`build_model` looks names up in. Each architecture lives in its
own module (:mod:`.vgg`, :mod:`.resnet`, …) and registers itself with
:func:`register_architecture`; adding one is one new module plus its import in
:mod:`parasnn.zoo`.

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

from torch import nn

from ..neurons.base import ActivationQuantizer
from ..neurons.qcfs import QCFS
from ..runtime.checks import require_positive_int

__all__ = ["ActivationKind", "ActivationSpec", "ActivationFactory", "ActivationSites", "ModelSpec", "Architecture",
           "register_architecture", "architecture", "model_names", "default_widths", "build_model",
           "count_activation_sites", "initialise", "check_input_shape", "CNN_ACTIVATIONS"]

# A zero-argument callable that returns a fresh activation module on every call.
ActivationFactory = Callable[[], nn.Module]


# --------------------------------------------------------------------------- activation spec


class ActivationKind(str, enum.Enum):
    """Which activation the ANN uses: plain ReLU (converted training-free), QCFS, the signed
    clip of PMSM, or GELU (transformers: converted training-free by fitted multi-basis
    neurons, docs/maths.md §7; ``levels`` and ``threshold`` do not apply to it)."""

    RELU = "relu"
    QCFS = "qcfs"
    # PMSM ([PMSM]): the signed clip clip(x, −r, r) with r = ``threshold`` (learnt), trained
    # in full precision; ``parasnn pmsm`` quantizes it to ``levels`` levels per polarity.
    SIGNED = "signed"
    GELU = "gelu"


def _check_level(value: Any) -> int:
    require_positive_int(value, "ActivationSpec: every level")
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
        if self.kind is ActivationKind.GELU:
            return nn.GELU()
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


class ActivationSites:
    """Hands out the activations of one model in forward order and counts them."""

    def __init__(self, spec: ActivationSpec):
        self.spec = spec
        self.count = 0

    def new(self) -> nn.Module:
        module = self.spec.make(self.count)
        self.count += 1
        return module


# --------------------------------------------------------------------------- weight init


def initialise(model: nn.Module) -> None:
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


def check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                    for s in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive integers, got {input_shape!r}")
    return tuple(input_shape)


# --------------------------------------------------------------------------- registry


# The activations a CNN of this zoo trains with (every site's module from ActivationSpec.make).
CNN_ACTIVATIONS = (ActivationKind.QCFS, ActivationKind.RELU, ActivationKind.SIGNED)


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: ``build(*, input_shape, num_classes, width, new_activation)``,
    its default base width, its number of activation sites (independent of width and input),
    the activation kinds it accepts (the first is its default).

    A transformer accepts GELU only: its GELU sites convert through fitted multi-basis neurons,
    and a QCFS or ReLU transformer is a different network (a decision, docs/decisions.md)."""

    build: Callable[..., nn.Module]
    default_width: int
    activation_sites: int
    activations: tuple[ActivationKind, ...] = CNN_ACTIVATIONS

    @property
    def default_activation(self) -> ActivationKind:
        return self.activations[0]

    def check_activation(self, name: str, kind: ActivationKind | str) -> None:
        """A ValueError naming the architecture, its accepted kinds and the fix, for any other ``kind``."""
        kind = ActivationKind(kind)
        if kind not in self.activations:
            accepted = ", ".join(k.value for k in self.activations)
            raise ValueError(f"{name} trains with {accepted} activations only, not {kind.value}; drop --activation "
                             f"(default {self.default_activation.value}) or pass --activation "
                             f"{self.default_activation.value}")


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, build: Callable[..., nn.Module], *, default_width: int,
                          activation_sites: int, activations: tuple[ActivationKind, ...] = CNN_ACTIVATIONS) -> None:
    """Make ``name`` buildable from a :class:`ModelSpec` (called by each architecture module);
    ``activations``: the kinds it accepts, its default first."""
    if name in _ARCHITECTURES and _ARCHITECTURES[name].build is not build:
        raise ValueError(f"model name {name!r} is already registered")
    if not activations:
        raise ValueError(f"register_architecture({name!r}): activations must name at least one ActivationKind")
    _ARCHITECTURES[name] = Architecture(build, default_width, activation_sites,
                                        tuple(ActivationKind(kind) for kind in activations))


def model_names() -> tuple[str, ...]:
    """The registered architecture names, in registration order."""
    return tuple(_ARCHITECTURES)


def default_widths() -> dict[str, int]:
    """``{name: default base width}`` of every registered architecture."""
    return {name: entry.default_width for name, entry in _ARCHITECTURES.items()}


def architecture(name: str) -> Architecture:
    """The registered :class:`Architecture` called ``name``, or a ValueError listing the names."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(_ARCHITECTURES)}")
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
        entry = architecture(self.name)  # fail at the spec, not later at build time
        object.__setattr__(self, "input_shape", check_input_shape(tuple(self.input_shape)))
        require_positive_int(self.num_classes, "ModelSpec: num_classes")
        if not isinstance(self.activation, ActivationSpec):
            raise TypeError(f"ModelSpec: activation must be an ActivationSpec, got {type(self.activation).__name__}")
        entry.check_activation(self.name, self.activation.kind)
        if self.width is not None and (isinstance(self.width, bool) or not isinstance(self.width, int)
                                       or self.width < 1):
            raise ValueError(f"ModelSpec: width must be None or an integer >= 1, got {self.width!r}")

    @property
    def resolved_width(self) -> int:
        """The base width the model is built with (``width`` or the default)."""
        return self.width if self.width is not None else architecture(self.name).default_width

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
    shape). For a module, the number of distinct ``nn.ReLU`` / ``nn.GELU`` / quantizer modules in it —
    equal to the number of call sites for every model :func:`build_model` makes, because
    those never reuse an activation module.
    """
    if isinstance(spec_or_model, ModelSpec):
        return architecture(spec_or_model.name).activation_sites
    if isinstance(spec_or_model, nn.Module):
        return sum(isinstance(module, (nn.ReLU, nn.GELU, ActivationQuantizer)) for module in spec_or_model.modules())
    raise TypeError(f"count_activation_sites: expected a ModelSpec or nn.Module, "
                    f"got {type(spec_or_model).__name__}")


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the (freshly initialised) network a :class:`ModelSpec` describes.

    Raises ``ValueError`` if ``spec.activation.levels`` is a tuple whose length is not the
    model's number of activation sites.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"build_model: expected a ModelSpec, got {type(spec).__name__}")
    entry = architecture(spec.name)
    expected = entry.activation_sites
    levels = spec.activation.levels
    if isinstance(levels, tuple) and len(levels) != expected:
        raise ValueError(f"{spec.name} has {expected} activation sites, but activation.levels has "
                         f"{len(levels)} entries; give one level per site or a single integer")
    sites = ActivationSites(spec.activation)
    model = entry.build(input_shape=spec.input_shape, num_classes=spec.num_classes,
                               width=spec.resolved_width, new_activation=sites.new)
    if sites.count != expected:  # the registry's count and the architecture disagree: a bug here
        raise RuntimeError(f"{spec.name}: built {sites.count} activation sites, registry says {expected}")
    return model
