"""Modules described as data: a class from an allow-list, a JSON config and named tensors.

:mod:`parasnn.io.portable` saves a converted network without pickled code. Every module in
it is written as ``{"class": name, "config": {...}, "tensors": {...}, "children": {...}}``
and rebuilt by calling the class's constructor with that config, then putting the saved
tensors back in place (same dtype, shape and bits). Only classes in the allow-list can be
rebuilt, so a file can never name arbitrary code to run.

* ``torch.nn`` layers that conversion keeps (conv, linear, batch norm, pooling, flatten,
  dropout, padding, ReLU, …) are described by generic introspection: the constructor's
  arguments are read back from the attributes of the same name (``Conv2d.stride``, …).
* parasnn's own layers (neurons, quantizers, the rate max-pool) are built from a skeleton
  (constructor arguments whose values the saved tensors then overwrite) plus a list of
  plain attributes (``levels``, ``surrogate_width``, …).

Other classes can be added with :func:`register_module`.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

__all__ = ["NetworkFileError", "ModuleSpec", "register_module", "register_torch_module", "spec_for",
           "class_name", "encode_value", "decode_value", "describe_module", "build_module"]


class NetworkFileError(ValueError):
    """A network that cannot be saved, or a file that cannot be loaded; the message says why."""


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """How one class is described and rebuilt.

    ``config(module)`` → JSON-encodable dict; ``build(config, children)`` → a new module whose
    parameters and buffers have the saved names (their values are replaced afterwards);
    ``children``: whether the module's submodules are saved with it (e.g. a wrapped pool).
    """

    name: str
    cls: type
    config: Callable[[nn.Module], dict]
    build: Callable[[dict, dict[str, nn.Module]], nn.Module]
    children: bool = False


_BY_CLASS: dict[type, ModuleSpec] = {}
_BY_NAME: dict[str, ModuleSpec] = {}


def register_module(spec: ModuleSpec) -> None:
    """Add a class to the allow-list (its ``name`` is what files store)."""
    _BY_CLASS[spec.cls] = spec
    _BY_NAME[spec.name] = spec


# -- torch.nn classes: constructor arguments read back from attributes -----------------

_SKIPPED_ARGUMENTS = {"self", "device", "dtype"}


def _torch_config(module: nn.Module) -> dict:
    config = {}
    for name, parameter in inspect.signature(type(module).__init__).parameters.items():
        if name in _SKIPPED_ARGUMENTS or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if isinstance(parameter.default, bool) and (getattr(module, name, 0) is None
                                                    or isinstance(getattr(module, name, None), Tensor)):
            config[name] = getattr(module, name) is not None  # e.g. bias: a flag argument, a tensor attribute
        elif hasattr(module, name):
            config[name] = getattr(module, name)
        elif parameter.default is parameter.empty:
            raise NetworkFileError(f"{type(module).__name__}: constructor argument {name!r} is not an attribute")
    return config


def register_torch_module(cls: type) -> None:
    """Allow a ``torch.nn`` class whose constructor arguments are attributes of the same name."""
    register_module(ModuleSpec(name=f"torch.nn.{cls.__name__}", cls=cls, config=_torch_config,
                               build=lambda config, children, cls=cls: cls(**config)))


for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
             nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
             nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
             nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Identity,
             nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
             nn.ReLU, nn.ReLU6, nn.Embedding, nn.LayerNorm, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
             nn.Softmax):
    register_torch_module(_cls)


# -- parasnn classes: a skeleton, then the saved attributes ---------------------------

def _register_parasnn(name: str, cls: type, skeleton: dict, attributes: tuple[str, ...],
                      optional: tuple[str, ...] = ()) -> None:
    """``optional``: attributes that files written before they existed lack; such a file keeps
    the skeleton's value (the behaviour of the parasnn that wrote it)."""
    def config(module):
        return {attribute: getattr(module, attribute) for attribute in attributes + optional}

    def build(config, children):
        module = cls(**skeleton)
        for attribute in attributes:
            setattr(module, attribute, config[attribute])
        for attribute in optional:
            if attribute in config:
                setattr(module, attribute, config[attribute])
        return module

    register_module(ModuleSpec(name=name, cls=cls, config=config, build=build))


def _register_parasnn_classes() -> None:
    from ..conversion.stages import RateMaxPool
    from ..neurons.if_neuron import IFNeuron
    from ..neurons.pascal import PascalNeuron
    from ..neurons.pmsm import PolarityMultiSpikeNeuron, PolarityQuantizer
    from ..neurons.qcfs import QCFS

    # Skeleton values are placeholders: the saved tensors replace every buffer and parameter.
    # levels: the L a trained QCFS layer's neuron keeps at T > L (docs/maths.md §3a); None before.
    _register_parasnn("parasnn.IFNeuron", IFNeuron, {"threshold": 1.0}, ("surrogate_width",), optional=("levels",))
    _register_parasnn("parasnn.QCFS", QCFS, {"levels": 1, "threshold": 1.0}, ("levels",))
    _register_parasnn("parasnn.PascalNeuron", PascalNeuron, {"threshold": 1.0, "levels": 1}, ("levels",))
    _register_parasnn("parasnn.PolarityMultiSpikeNeuron", PolarityMultiSpikeNeuron,
                      {"threshold": 1.0, "positive_levels": 1, "negative_levels": 1},
                      ("positive_levels", "negative_levels"))
    _register_parasnn("parasnn.PolarityQuantizer", PolarityQuantizer, {"levels": 1},
                      ("positive_levels", "negative_levels", "quantized"))
    register_module(ModuleSpec(name="parasnn.RateMaxPool", cls=RateMaxPool, config=lambda module: {},
                               build=lambda config, children: RateMaxPool(children["pool"]), children=True))


def _register_transformer_classes() -> None:
    """The layers of converted transformers: fitted functions (one MBE neuron per T), products
    of two activations, the max of rates inside softmax."""
    import torch

    from ..conversion.pooling import Amax
    from ..neurons.function_neuron import FunctionNeuron
    from ..neurons.mbe import MBENeuron, MBEParameters
    from ..neurons.product_layer import SpikingProduct

    def mbe_skeleton(config, children):
        bases, steps = int(config["bases"]), int(config["time_steps"])
        vector, table = torch.ones(bases), torch.ones(bases, steps)
        return MBENeuron(MBEParameters(input_scale=vector, input_shift=vector, threshold=table, reset=table,
                                       intensity=table, weight=vector, output_bias=torch.zeros(())),
                         function=str(config["function"]))

    register_module(ModuleSpec(name="parasnn.MBENeuron", cls=MBENeuron, build=mbe_skeleton,
                               config=lambda module: {"bases": module.bases, "time_steps": module.time_steps,
                                                      "function": module.function}))
    register_module(ModuleSpec(name="torch.nn.ModuleDict", cls=nn.ModuleDict, config=lambda module: {},
                               build=lambda config, children: nn.ModuleDict(children), children=True))
    register_module(ModuleSpec(
        name="parasnn.FunctionNeuron", cls=FunctionNeuron, children=True,
        config=lambda module: {"function": module.function.value},
        build=lambda config, children: FunctionNeuron(config["function"],
                                                      {int(k): v for k, v in children["neurons"].items()})))
    register_module(ModuleSpec(name="parasnn.SpikingProduct", cls=SpikingProduct,
                               config=lambda module: {"kind": module.kind.value},
                               build=lambda config, children: SpikingProduct(config["kind"])))
    register_module(ModuleSpec(name="parasnn.Amax", cls=Amax,
                               config=lambda module: {"dim": module.dim, "keepdim": module.keepdim},
                               build=lambda config, children: Amax(config["dim"], config["keepdim"])))


_register_parasnn_classes()
_register_transformer_classes()


def spec_for(module: nn.Module, *, where: str) -> ModuleSpec:
    """The allow-list entry of ``module``'s exact class (a subclass may behave differently)."""
    spec = _BY_CLASS.get(type(module))
    if spec is None:
        raise NetworkFileError(
            f"cannot save {where} ({class_name(module)}): its class is not in the allow-list of modules that "
            "can be rebuilt without pickled code. Add it with parasnn.io.module_config.register_module(...) "
            "or replace it with a supported layer.")
    return spec


def class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


# -- values: JSON with tags for what JSON lacks ------------------------------------------

def encode_value(value: Any, *, where: str) -> Any:
    """``value`` as JSON data. Lists stay lists; tuples, dicts, non-finite floats, slices,
    dtypes, devices and graph-node references become one-key tagged objects."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, tuple):
        return {"tuple": [encode_value(item, where=where) for item in value]}
    if isinstance(value, list):
        return [encode_value(item, where=where) for item in value]
    if isinstance(value, dict):
        return {"dict": [[encode_value(k, where=where), encode_value(v, where=where)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [encode_value(part, where=where) for part in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise NetworkFileError(f"cannot save {where}: a value of type {type(value).__name__} has no JSON form")


def decode_value(data: Any, *, nodes: dict[str, fx.Node] | None = None, where: str) -> Any:
    """Inverse of :func:`encode_value`; ``nodes`` resolves node references."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode_value(item, nodes=nodes, where=where) for item in data]
    if not isinstance(data, dict) or len(data) != 1:
        raise NetworkFileError(f"{where}: unreadable value {data!r}")
    (tag, body), = data.items()
    decode = lambda item: decode_value(item, nodes=nodes, where=where)  # noqa: E731
    if tag == "node":
        if nodes is None or body not in nodes:
            raise NetworkFileError(f"{where}: reference to unknown node {body!r}")
        return nodes[body]
    if tag == "float" and body in ("inf", "-inf", "nan"):
        return float(body)
    if tag == "size":
        return torch.Size(body)
    if tag == "tuple":
        return tuple(decode(item) for item in body)
    if tag == "dict":
        return {decode(k): decode(v) for k, v in body}
    if tag == "slice":
        return slice(*(decode(part) for part in body))
    if tag == "ellipsis":
        return Ellipsis
    if tag in ("dtype", "memory_format") and isinstance(getattr(torch, str(body), None), (torch.dtype,
                                                                                          torch.memory_format)):
        return getattr(torch, body)
    if tag == "device":
        return torch.device(body)
    raise NetworkFileError(f"{where}: unreadable value {data!r}")


# -- modules -------------------------------------------------------------------------------

def describe_module(module: nn.Module, path: str, tensors: dict[str, Tensor]) -> dict:
    """The JSON description of ``module`` (at dotted ``path``); its tensors are added to
    ``tensors`` under ``path.name`` keys."""
    spec = spec_for(module, where=f"module '{path}'")
    entries = {}
    for name, parameter in module._parameters.items():
        if parameter is not None:
            tensors[f"{path}.{name}"] = parameter.detach()
            entries[name] = {"kind": "parameter", "requires_grad": parameter.requires_grad}
    for name, buffer in module._buffers.items():
        if buffer is not None:
            tensors[f"{path}.{name}"] = buffer.detach()
            entries[name] = {"kind": "buffer", "persistent": name not in module._non_persistent_buffers_set}
    children = dict(module._modules)
    if children and not spec.children:
        raise NetworkFileError(f"cannot save module '{path}' ({spec.name}): it has submodules "
                               f"{sorted(children)} that its description does not cover")
    return {"class": spec.name,
            "config": {key: encode_value(value, where=f"module '{path}'") for key, value in spec.config(module).items()},
            "tensors": entries,
            "children": {name: describe_module(child, f"{path}.{name}", tensors)
                         for name, child in children.items()}}


def build_module(description: dict, path: str, tensors: dict[str, Tensor]) -> nn.Module:
    """Rebuild the module that :func:`describe_module` described, with the saved tensors."""
    where = f"module '{path}'"
    try:
        name, config, entries, children = (description["class"], description["config"], description["tensors"],
                                           description["children"])
    except (KeyError, TypeError):
        raise NetworkFileError(f"{where}: incomplete description {description!r}") from None
    spec = _BY_NAME.get(name)
    if spec is None:
        raise NetworkFileError(f"{where}: class {name!r} is not in the allow-list of loadable modules "
                               f"(known: {', '.join(sorted(_BY_NAME))})")
    built_children = {child: build_module(child_description, f"{path}.{child}", tensors)
                      for child, child_description in children.items()}
    try:
        module = spec.build({key: decode_value(value, where=where) for key, value in config.items()}, built_children)
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise NetworkFileError(f"{where}: cannot build {name} from {config!r}: {error}") from None
    made = {n for n, t in module._parameters.items() if t is not None} | \
        {n for n, t in module._buffers.items() if t is not None}
    if made != set(entries):
        raise NetworkFileError(f"{where}: {name} has tensors {sorted(made)}, the file lists {sorted(entries)}")
    for tensor_name, entry in entries.items():
        key = f"{path}.{tensor_name}"
        if key not in tensors:
            raise NetworkFileError(f"{where}: tensor {key!r} is missing from the weights file")
        value = tensors[key]
        # Put the saved tensor in place as it is (dtype, shape): load_state_dict would cast it
        # to the skeleton's dtype and refuse per-channel shapes.
        if entry.get("kind") == "parameter":
            module._parameters[tensor_name] = nn.Parameter(value, requires_grad=bool(entry.get("requires_grad")))
        else:
            module._buffers[tensor_name] = value
            if not entry.get("persistent", True):
                module._non_persistent_buffers_set.add(tensor_name)
    return module
