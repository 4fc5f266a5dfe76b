"""Save and load any converted network: safetensors weights plus a JSON graph, no pickled code.

``parasnn.save(network, "net/")`` writes a directory with two files:

* ``weights.safetensors`` — every parameter and buffer, under its dotted module path;
* ``network.json`` — the torch.fx graph (every node's op, target, arguments and node
  references), every module (a class from the allow-list of
  :mod:`parasnn.io.module_config`, its constructor config and the names of its tensors),
  the conversion config, and the SHA-256 of the weights file.

``parasnn.load("net/")`` rebuilds the :class:`~parasnn.conversion.network.SpikingNetwork` in any
process, without the class of the ANN it was converted from: the graph only calls allow-listed
functions (torch/operator arithmetic and the layers conversion keeps) and tensor methods. The
loaded network computes the same bits as the saved one (same modules, same tensors, same
operations in the same order).
"""
from __future__ import annotations

import hashlib
import json
import keyword
import operator
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..conversion.network import SpikingNetwork
from .files import atomic_path, write_json
from .module_config import NetworkFileError, build_module, decode_value, describe_module, encode_value

__all__ = ["save", "load", "read_description", "NetworkFileError", "FORMAT", "VERSION", "GRAPH_FILE", "WEIGHTS_FILE",
           "ALLOWED_FUNCTIONS"]

FORMAT, VERSION = "parasnn-network", 1
GRAPH_FILE, WEIGHTS_FILE = "network.json", "weights.safetensors"


def _functions() -> dict[str, object]:
    table = {f"operator.{name}": getattr(operator, name) for name in (
        "add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "floordiv", "neg", "pos", "getitem",
        "pow", "matmul", "invert", "eq", "ne", "lt", "le", "gt", "ge")}
    table["builtins.getattr"] = getattr
    table.update({f"torch.{name}": getattr(torch, name) for name in (
        "add", "sub", "mul", "div", "cat", "concat", "stack", "flatten", "reshape", "transpose", "permute",
        "squeeze", "unsqueeze", "chunk", "split", "mean", "sum", "narrow", "relu", "relu_", "clamp", "zeros_like",
        "ones_like", "neg", "matmul", "bmm", "ones", "zeros", "arange", "tril", "triu", "where", "exp",
        "sigmoid", "tanh", "softmax", "rsqrt", "reciprocal", "amax", "_assert")})
    # Operations on analog values (before the first neuron) run unchanged in a converted graph.
    table.update({f"torch.nn.functional.{name}": getattr(F, name) for name in (
        "gelu", "silu", "hardswish", "hardsigmoid", "relu6", "softmax", "layer_norm", "normalize", "embedding",
        "scaled_dot_product_attention")})
    table.update({f"torch.nn.functional.{name}": getattr(F, name) for name in (
        "relu", "relu_", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
        "adaptive_max_pool2d", "adaptive_max_pool3d", "dropout", "dropout1d", "dropout2d", "dropout3d", "linear",
        "conv1d", "conv2d", "conv3d", "pad", "batch_norm")})
    return table


# The functions a saved graph may call, by the name stored in the file. Everything else a
# converted graph does is a module call (allow-listed classes) or a tensor method.
ALLOWED_FUNCTIONS: dict[str, object] = _functions()
_FUNCTION_NAMES = {id(function): name for name, function in ALLOWED_FUNCTIONS.items()}


def _function_name(node: fx.Node) -> str:
    name = _FUNCTION_NAMES.get(id(node.target))
    if name is None:
        target = getattr(node.target, "__qualname__", repr(node.target))
        raise NetworkFileError(f"cannot save node '{node.name}': function {target} is not in "
                               "parasnn.io.portable.ALLOWED_FUNCTIONS")
    return name


def _check_method(name: object, *, where: str) -> str:
    # A method name is looked up on a tensor at run time: refuse dunder/private names so a
    # file cannot reach interpreter internals.
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or keyword.iskeyword(name):
        raise NetworkFileError(f"{where}: {name!r} is not a tensor method name that can be loaded")
    return name


def _attribute(root: nn.Module, path: str):
    value = root
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _describe_graph(gm: fx.GraphModule, tensors: dict[str, Tensor]) -> tuple[list, dict, dict]:
    nodes, modules, attributes = [], {}, {}
    for node in gm.graph.nodes:
        where = f"node '{node.name}'"
        target = node.target
        if node.op == "call_module":
            if target not in modules:
                modules[target] = describe_module(gm.get_submodule(target), target, tensors)
        elif node.op == "call_function":
            target = _function_name(node)
        elif node.op == "call_method":
            _check_method(target, where=where)
        elif node.op == "get_attr" and target not in attributes:
            value = _attribute(gm, target)
            if not isinstance(value, Tensor):
                raise NetworkFileError(f"cannot save {where}: attribute '{target}' is a {type(value).__name__}")
            parent_path, _, leaf = target.rpartition(".")
            parent = gm.get_submodule(parent_path) if parent_path else gm
            kind = "parameter" if leaf in parent._parameters else "buffer" if leaf in parent._buffers else "constant"
            tensors[target] = value.detach()
            attributes[target] = {"kind": kind, "requires_grad": bool(value.requires_grad)}
        nodes.append({"name": node.name, "op": node.op, "target": target,
                      "args": encode_value(node.args, where=where), "kwargs": {key: encode_value(value, where=where) for key, value in node.kwargs.items()}})
    return nodes, modules, attributes


def save(network: SpikingNetwork, path: str | Path, *, input_shape: tuple[int, ...] | None = None) -> Path:
    """Write ``network`` to the directory ``path`` (created if needed): ``weights.safetensors``
    and ``network.json``. ``input_shape`` (one example, no batch axis, e.g. ``(3, 32, 32)``)
    is recorded for tools that need it (``parasnn export --format nir``). Raises
    :class:`NetworkFileError` naming the first module or node that has no data description.
    Returns the directory."""
    from safetensors.torch import save_file

    if not isinstance(network, SpikingNetwork):
        raise TypeError(f"parasnn.save: expected a SpikingNetwork (from parasnn.convert), got {type(network).__name__}")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NetworkFileError(f"parasnn.save: {directory} exists and is not a directory; give a directory path")
    tensors: dict[str, Tensor] = {}
    nodes, modules, attributes = _describe_graph(network.graph_module, tensors)
    # safetensors refuses shared or strided storage: give each tensor its own contiguous copy.
    tensors = {key: value.contiguous().clone().cpu() for key, value in tensors.items()}
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={"format": FORMAT})
        digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
    config = network.config.to_dict() if hasattr(network.config, "to_dict") else None
    from .. import __version__
    write_json(directory / GRAPH_FILE, {
        "format": FORMAT, "version": VERSION, "parasnn": __version__, "torch": torch.__version__,
        "source": network.source, "conversion": config, "weights_sha256": digest,
        "input_shape": list(input_shape) if input_shape is not None else None,
        "modules": modules, "attributes": attributes, "graph": nodes})
    return directory


def read_description(path: str | Path) -> dict:
    """The JSON description of a saved network (graph, modules, ``input_shape``, …), checked
    for format and version, without reading the weights."""
    return _read(Path(path), weights=False)[0]


def _read(directory: Path, *, weights: bool = True) -> tuple[dict, dict[str, Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not directory.is_dir():
        raise NetworkFileError(f"parasnn.load: {directory} is not a directory saved by parasnn.save")
    graph_file, weights_file = directory / GRAPH_FILE, directory / WEIGHTS_FILE
    for file in (graph_file, weights_file):
        if not file.is_file():
            raise NetworkFileError(f"parasnn.load: {file} is missing; a saved network has {GRAPH_FILE} and "
                                   f"{WEIGHTS_FILE}")
    try:
        description = json.loads(graph_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NetworkFileError(f"parasnn.load: {graph_file} is not valid JSON ({error}); the file is corrupt "
                               "or truncated") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise NetworkFileError(f"parasnn.load: {graph_file} is not a parasnn network description "
                               f"(format {description.get('format') if isinstance(description, dict) else None!r})")
    if description.get("version") != VERSION:
        raise NetworkFileError(f"parasnn.load: {graph_file} has format version {description.get('version')!r}; "
                               f"this parasnn reads version {VERSION}")
    if not weights:
        return description, {}
    data = weights_file.read_bytes()
    if hashlib.sha256(data).hexdigest() != description.get("weights_sha256"):
        raise NetworkFileError(f"parasnn.load: {weights_file} does not match {graph_file} (checksum differs): "
                               "the weights file is corrupt, truncated or from another save")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as error:
        raise NetworkFileError(f"parasnn.load: {weights_file} is not a safetensors file ({error})") from None
    return description, tensors


def _set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    parent = root
    *parents, leaf = path.split(".")
    for part in parents:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    parent.add_module(leaf, module)


def _set_attribute(root: nn.Module, path: str, value: Tensor, entry: dict) -> None:
    parent_path, _, leaf = path.rpartition(".")
    if parent_path:
        if not hasattr(root, parent_path.split(".")[0]):
            _set_path(root, parent_path, nn.Module())
        parent = root.get_submodule(parent_path)
    else:
        parent = root
    if entry.get("kind") == "parameter":
        parent.register_parameter(leaf, nn.Parameter(value, requires_grad=bool(entry.get("requires_grad"))))
    elif entry.get("kind") == "buffer":
        parent.register_buffer(leaf, value)
    else:
        setattr(parent, leaf, value)


def _rebuild_graph(nodes: list) -> fx.Graph:
    graph = fx.Graph()
    by_name: dict[str, fx.Node] = {}
    for entry in nodes:
        try:
            name, op, target = entry["name"], entry["op"], entry["target"]
            where = f"node '{name}'"
            args = decode_value(entry["args"], nodes=by_name, where=where)
            kwargs = {key: decode_value(value, nodes=by_name, where=where) for key, value in entry["kwargs"].items()}
        except (KeyError, TypeError, AttributeError):
            raise NetworkFileError(f"graph node {entry!r} is incomplete") from None
        if op == "call_function":
            if target not in ALLOWED_FUNCTIONS:
                raise NetworkFileError(f"{where}: function {target!r} is not in parasnn.io.portable.ALLOWED_FUNCTIONS")
            target = ALLOWED_FUNCTIONS[target]
        elif op == "call_method":
            _check_method(target, where=where)
        elif op not in ("placeholder", "get_attr", "call_module", "output"):
            raise NetworkFileError(f"{where}: unknown operation {op!r}")
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise NetworkFileError(f"{where}: arguments must be a tuple and keywords a dict")
        by_name[name] = graph.create_node(op, target, args, kwargs, name=name)
    return graph


def load(path: str | Path) -> SpikingNetwork:
    """Read a network written by :func:`save`. Raises :class:`NetworkFileError` naming the file
    and the problem (missing, corrupt, another format, an unknown class or function)."""
    from ..conversion.stages import ConversionConfig

    directory = Path(path)
    description, tensors = _read(directory)
    try:
        root = nn.Module()
        for module_path, module_description in description["modules"].items():
            _set_path(root, module_path, build_module(module_description, module_path, tensors))
        for attribute_path, entry in description["attributes"].items():
            if attribute_path not in tensors:
                raise NetworkFileError(f"attribute {attribute_path!r} is missing from the weights file")
            _set_attribute(root, attribute_path, tensors[attribute_path], entry)
        graph = _rebuild_graph(description["graph"])
        graph.lint()
        gm = fx.GraphModule(root, graph, str(description.get("source") or "Network"))
        config = description.get("conversion")
        config = ConversionConfig.from_dict(config) if config else None
    except NetworkFileError as error:
        raise NetworkFileError(f"parasnn.load: {directory / GRAPH_FILE}: {error}") from None
    except (KeyError, TypeError, AttributeError, RuntimeError) as error:
        raise NetworkFileError(f"parasnn.load: {directory / GRAPH_FILE} is not a consistent network description "
                               f"({type(error).__name__}: {error})") from None
    return SpikingNetwork(gm, source=str(description.get("source")), config=config)
