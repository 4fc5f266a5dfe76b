"""NIR import: a ``nir.NIRGraph`` as a parasnn :class:`~parasnn.conversion.network.SpikingNetwork`.

Graphs written by :func:`parasnn.io.nir.to_nir` carry parasnn metadata (the exact neurons,
BatchNorm statistics, unfolded weights, pooling options) and come back bit for bit; graphs
from other tools are read by their NIR meaning (docs/nir.md). Public entry point:
:func:`parasnn.io.nir.from_nir`.
"""
from __future__ import annotations

import json
import keyword
import operator

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from ..conversion.network import SpikingNetwork
from ..conversion.stages import RateMaxPool
from ..neurons.if_neuron import IFNeuron
from .nir import IF_TENSORS, METADATA_KEY, NIRError

__all__ = ["network_from_graph"]


def _text(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _order(graph) -> list[str]:
    """Node names in an order where every edge goes forward (Kahn; ties in edge order)."""
    waiting = {name: 0 for name in graph.nodes}
    for _, target in graph.edges:
        waiting[target] += 1
    ready = [name for name in graph.nodes if waiting[name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for source, target in graph.edges:
            if source == name:
                waiting[target] -= 1
                if waiting[target] == 0:
                    ready.append(target)
    if len(order) != len(graph.nodes):
        raise NIRError("the NIR graph has a cycle (recurrent connections are not supported)")
    return order


class _Importer:
    def __init__(self, graph):
        self.graph_ir = graph
        raw = graph.metadata.get(METADATA_KEY) if graph.metadata else None
        info = json.loads(_text(raw)) if raw is not None else {}
        self.meta: dict[str, dict] = info.get("nodes", {})
        self.source = info.get("source", "NIRGraph")
        self.shapes_of: dict[str, list[int]] = info.get("shapes", {})
        self.root = nn.Module()
        self.fx = fx.Graph()
        self.time_steps = self.fx.placeholder("time_steps")

    def tensor(self, node_name: str, key: str, fallback=None) -> Tensor:
        full_key = f"{METADATA_KEY}.{node_name}.{key}"
        value = self.graph_ir.metadata.get(full_key)
        if value is None:
            if fallback is None:
                raise NIRError(f"node '{node_name}': metadata {key!r} is missing")
            return torch.from_numpy(np.array(fallback))
        return torch.from_numpy(np.array(value).reshape(self.shapes_of.get(full_key, np.shape(value))))

    @staticmethod
    def attribute(name: str) -> str:
        """A NIR node name as a module attribute (NIR allows ``if``, ``0``, ``a.b``)."""
        text = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
        return text if text.isidentifier() and not keyword.iskeyword(text) else f"node_{text}"

    def module(self, name: str, module: nn.Module, value, **kwargs) -> fx.Node:
        attribute = self.attribute(name)
        self.root.add_module(attribute, module)
        return self.fx.call_module(attribute, (value,), kwargs)

    def build(self, name: str, node, value) -> fx.Node:
        import nir
        meta = self.meta.get(name, {})
        kind = meta.get("module")
        if isinstance(node, (nir.Conv1d, nir.Conv2d)) and kind == "batchnorm" or \
                isinstance(node, nir.Affine) and kind == "batchnorm":
            return self.module(name, self.batchnorm(name, node, meta), value)
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            weight = self.tensor(name, "weight", node.weight)
            bias = self.tensor(name, "bias", node.bias)
            conv = (nn.Conv2d if isinstance(node, nir.Conv2d) else nn.Conv1d)(
                weight.shape[1] * int(node.groups), weight.shape[0], tuple(weight.shape[2:]),
                stride=tuple(int(v) for v in np.atleast_1d(node.stride)),
                padding=tuple(int(v) for v in np.atleast_1d(node.padding)),
                dilation=tuple(int(v) for v in np.atleast_1d(node.dilation)), groups=int(node.groups),
                bias=meta.get("bias", True), dtype=weight.dtype)
            conv.weight = nn.Parameter(weight)
            if conv.bias is not None:
                conv.bias = nn.Parameter(bias)
            return self.module(name, conv, value)
        if isinstance(node, (nir.Affine, nir.Linear)):
            weight = self.tensor(name, "weight", node.weight)
            has_bias = isinstance(node, nir.Affine)
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, dtype=weight.dtype)
            linear.weight = nn.Parameter(weight)
            if has_bias:
                linear.bias = nn.Parameter(self.tensor(name, "bias", node.bias))
            return self.module(name, linear, value)
        if isinstance(node, nir.AvgPool2d):
            if kind == "adaptive_avg_pool":
                return self.module(name, nn.AdaptiveAvgPool2d(tuple(meta["output_size"])), value)
            return self.module(name, nn.AvgPool2d(tuple(int(v) for v in node.kernel_size),
                                                  tuple(int(v) for v in node.stride),
                                                  tuple(int(v) for v in node.padding)), value)
        if isinstance(node, nir.SumPool2d):
            kernel, stride, padding = (tuple(int(v) for v in x) for x in (node.kernel_size, node.stride, node.padding))
            if kind == "rate_max_pool":
                pool = nn.MaxPool2d(kernel, stride, padding, dilation=tuple(meta["dilation"]) if isinstance(
                    meta["dilation"], list) else meta["dilation"], ceil_mode=meta["ceil_mode"])
                return self.module(name, RateMaxPool(pool), value)
            return self.module(name, nn.AvgPool2d(kernel, stride, padding, divisor_override=1), value)
        if isinstance(node, nir.Flatten):
            start = int(node.start_dim)
            end = int(node.end_dim)
            return self.module(name, nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end),
                               value)
        if isinstance(node, nir.Scale):
            if kind == "amplitude":
                return value  # the IF neuron before it already carries θ_post
            if kind == "scale":
                function = operator.truediv if meta["op"] == "div" else operator.mul
                args = (meta["value"], value) if meta.get("left") else (value, meta["value"])
                return self.fx.call_function(function, args)
            attribute = f"{self.attribute(name)}_scale"
            self.root.register_buffer(attribute, torch.from_numpy(np.array(node.scale)))
            return self.fx.call_function(operator.mul, (value, self.fx.get_attr(attribute)))
        if isinstance(node, nir.IF):
            return self.module(name, self.if_neuron(name, node, meta), value, time_steps=self.time_steps)
        raise NIRError(f"node '{name}': NIR {type(node).__name__} has no parasnn counterpart "
                       "(supported: Input, Output, Conv1d/2d, Affine, Linear, AvgPool2d, SumPool2d, Flatten, Scale, IF)")

    def batchnorm(self, name, node, meta) -> nn.Module:
        import nir
        mean = self.tensor(name, "running_mean")
        cls = nn.BatchNorm1d if isinstance(node, (nir.Affine, nir.Conv1d)) else nn.BatchNorm2d
        norm = cls(mean.shape[0], eps=meta["eps"], affine=meta["affine"], dtype=mean.dtype).eval()
        norm.running_mean, norm.running_var = mean, self.tensor(name, "running_var")
        if meta["affine"]:
            norm.weight = nn.Parameter(self.tensor(name, "weight"))
            norm.bias = nn.Parameter(self.tensor(name, "bias"))
        return norm

    def if_neuron(self, name, node, meta) -> IFNeuron:
        if meta.get("module") == "if_neuron":
            neuron = IFNeuron(threshold=1.0, surrogate_width=meta["surrogate_width"])
            for key in IF_TENSORS:
                value = self.tensor(name, key)
                if key == "temporal_bias":
                    neuron.temporal_bias = nn.Parameter(value)
                else:
                    neuron._buffers[key] = value
            return neuron
        # A NIR IF from another tool: θ = v_threshold − v_reset, ψ = −v_reset, read per channel.
        if not np.allclose(node.r, 1.0):
            raise NIRError(f"node '{name}': IF with r ≠ 1 (input scaling) is not supported")
        threshold = torch.from_numpy(np.array(node.v_threshold - node.v_reset, dtype=np.float32))
        shift = torch.from_numpy(np.array(-node.v_reset, dtype=np.float32))
        per = lambda t: t.reshape(t.shape[0], -1)[:, 0] if t.dim() > 1 else t  # noqa: E731
        for tensor in (threshold, shift):
            if tensor.dim() > 1 and not bool((tensor.reshape(tensor.shape[0], -1) == per(tensor)[:, None]).all()):
                raise NIRError(f"node '{name}': IF parameters that vary within a channel are not supported")
        return IFNeuron(threshold=per(threshold), shift=per(shift), amplitude=torch.ones_like(per(threshold)))

    def run(self) -> SpikingNetwork:
        import nir
        values: dict[str, fx.Node] = {}
        output = None
        for name in _order(self.graph_ir):
            node = self.graph_ir.nodes[name]
            inputs = [values[s] for s, t in self.graph_ir.edges if t == name]
            if isinstance(node, nir.Input):
                values[name] = self.fx.placeholder(self.attribute(name))
                continue
            if not inputs:
                raise NIRError(f"node '{name}' has no input edge")
            value = inputs[0]
            for other in inputs[1:]:  # NIR sums the inputs of a node, in edge order here
                value = self.fx.call_function(operator.add, (value, other))
            if isinstance(node, nir.Output):
                output = value
                continue
            if isinstance(node, nir.NIRGraph):
                raise NIRError(f"node '{name}': nested NIR graphs are not supported")
            values[name] = self.build(name, node, value)
        if output is None:
            raise NIRError("the NIR graph has no Output node")
        self.fx.output(output)
        self.fx.lint()
        return SpikingNetwork(fx.GraphModule(self.root, self.fx, "NIRGraph"), source=self.source)


def network_from_graph(graph) -> SpikingNetwork:
    """:func:`parasnn.io.nir.from_nir`: the network a ``nir.NIRGraph`` describes."""
    return _Importer(graph).run()
