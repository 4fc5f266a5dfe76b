"""The rules of the operations every network is made of (docs/maths.md §3).

* **affine** operations — conv, linear, batch norm in eval, average pooling, dropout in
  eval, additions, concatenation, reshapes, scaling by a constant, … — commute with
  averaging over time, so the parallel network runs them once on time-averaged values
  and the serial network once per step;
* **ReLU** call sites get thresholds on calibration data, then become QCFS, then neurons;
* **quantizer** modules (QCFS and every :class:`~parasnn.neurons.base.ActivationQuantizer`)
  become the chosen method's neuron;
* **max-pools** become rate max-pools (:mod:`parasnn.conversion.pooling`);
* already converted layers (any :class:`~parasnn.neurons.base.SerialOp`) stay;
* **conv and linear** layers carry synaptic costs (docs/maths.md §8).

Neuron kinds with their own operations register further rules in their own modules.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..neurons.base import ActivationQuantizer, SerialOp
from .pooling import MAX_POOL_FUNCTIONS, MAX_POOL_MODULES, RateMaxPool, max_pool_module
from .rules import OperationCost, Role, Rule, function_rule, method_rule, module_rule, register, register_cost

__all__ = ["SYNAPTIC_TYPES", "AFFINE_MODULES", "AFFINE_FUNCTIONS", "AFFINE_METHODS", "RELU_FUNCTIONS", "RELU_METHODS", "RELU6_FUNCTIONS"]

SYNAPTIC_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d, nn.Linear)

AFFINE_MODULES = SYNAPTIC_TYPES + (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
)
AFFINE_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.pos,
    operator.getitem, getattr,
    torch.add, torch.sub, torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape,
    torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split,
    torch.mean, torch.sum, torch.narrow,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.linear, F.conv1d, F.conv2d, F.conv3d,
    F.pad, F.batch_norm,
}
AFFINE_METHODS = {
    "view", "reshape", "flatten", "unflatten", "size", "dim", "contiguous", "permute", "transpose",
    "squeeze", "unsqueeze", "mean", "sum", "add", "add_", "sub", "sub_", "neg", "chunk", "split",
    "expand", "expand_as", "view_as", "reshape_as", "clone", "narrow", "t",
}
# Affine only while at most one operand carries activations (and it is not a divisor).
_SCALING_FUNCTIONS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
_SCALING_METHODS = {"mul", "mul_", "div", "div_"}
_DIVISIONS = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}

RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
RELU_METHODS = {"relu", "relu_"}
# ReLU6 = min(ReLU, 6): a QCFS with θ ≤ 6 reproduces it as it does a ReLU (docs/decisions.md)
RELU6_FUNCTIONS = {F.relu6}


def _is_scaling(node, dependent) -> bool:
    operands = list(node.args) + list(node.kwargs.values())
    carrying = [arg for arg in operands if arg in dependent]
    if len(carrying) != 1:
        return False
    return not (node.target in _DIVISIONS and len(node.args) > 1 and node.args[1] in dependent)


def _without_indices(node, dependent) -> bool:
    return not node.kwargs.get("return_indices")


def _is_stochastic_depth_in_eval(gm, node, dependent) -> bool:
    """torchvision's ``stochastic_depth(input, p, mode, training)`` is the identity when
    ``training`` is false (a traced model in eval mode passes the constant False)."""
    target = node.target if node.op == "call_function" else None
    if getattr(target, "__name__", None) != "stochastic_depth" or \
            not str(getattr(target, "__module__", "")).startswith("torchvision"):
        return False
    training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
    return training is False


def _build_rate_max_pool(gm, node):
    return RateMaxPool(max_pool_module(gm, node))


def _synaptic_cost(module: nn.Module, inputs, output) -> OperationCost:
    batch = output.shape[0]
    if isinstance(module, nn.Linear):
        return OperationCost(synaptic=output.numel() // batch * module.in_features)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return OperationCost(synaptic=inputs[0].numel() // batch * (module.out_channels // module.groups)
                             * math.prod(module.kernel_size))
    return OperationCost(synaptic=output.numel() // batch * (module.in_channels // module.groups)
                         * math.prod(module.kernel_size))


# Registered oldest first; the registry tries the newest first, so the specific rules
# (converted layers, quantizers) come last here.
register(module_rule("affine module", AFFINE_MODULES, Role.AFFINE))
register(function_rule("affine function", AFFINE_FUNCTIONS, Role.AFFINE))
register(method_rule("affine method", AFFINE_METHODS, Role.AFFINE))
register(function_rule("scaling by a constant", _SCALING_FUNCTIONS, Role.AFFINE, when=_is_scaling))
register(method_rule("scaling method", _SCALING_METHODS, Role.AFFINE, when=_is_scaling))
register(module_rule("max-pool", MAX_POOL_MODULES, Role.SPIKING, build=_build_rate_max_pool,
                     when=lambda module: not getattr(module, "return_indices", False)))
register(function_rule("max-pool function", MAX_POOL_FUNCTIONS, Role.SPIKING, build=_build_rate_max_pool,
                       when=_without_indices))
register(Rule("stochastic depth in eval", Role.IGNORED, _is_stochastic_depth_in_eval, replacement=0))
register(module_rule("relu", (nn.ReLU,), Role.ACTIVATION))
register(function_rule("relu function", RELU_FUNCTIONS, Role.ACTIVATION))
register(method_rule("relu method", RELU_METHODS, Role.ACTIVATION))
register(module_rule("relu6", (nn.ReLU6,), Role.ACTIVATION))
register(function_rule("relu6 function", RELU6_FUNCTIONS, Role.ACTIVATION))
register(module_rule("quantizer", (ActivationQuantizer,), Role.QUANTIZER))
register(module_rule("converted", (SerialOp,), Role.CONVERTED))
register_cost(SYNAPTIC_TYPES, _synaptic_cost)
