"""Rules for transformers and modern CNNs: multi-basis (MBE) neurons for scalar functions,
products of two activations, and decompositions of softmax, layer norm and attention
(docs/maths.md §7, [MBE]).

* **fitted** — GELU (exact and tanh), SiLU, sigmoid, tanh, hardswish, exp, reciprocal and
  inverse square root become :class:`~parasnn.neurons.function_neuron.FunctionNeuron`
  layers: per call site and per T in ``ConversionConfig.function_time_steps``, an MBE
  neuron with ``ConversionConfig.bases`` bases fitted (once, cached) to the function over
  the inputs recorded at that site on calibration data; exp, reciprocal and rsqrt are
  fitted on a fixed mantissa interval and need no data. No weight of the ANN changes.
* **products** of two activations (``*``, ``@``, ``matmul``, ``bmm``) become
  :class:`~parasnn.neurons.product_layer.SpikingProduct` layers; a product with a constant
  or with an analog value stays affine (the scaling rule).
* **expanded** — softmax, ``nn.LayerNorm`` and ``F.layer_norm``, ``nn.MultiheadAttention``,
  ``F.scaled_dot_product_attention``, ``F.normalize``, hardsigmoid, division by an
  activation, and torchvision's Swin ``shifted_window_attention`` and
  ``_patch_merging_pad`` are replaced by their decompositions
  (:mod:`parasnn.conversion.decompositions`, :mod:`parasnn.conversion.window_attention`),
  whose primitives the rules above claim; the max inside softmax is a max of rates;
  ``torch.roll`` (Swin's cyclic shift), ``swapaxes`` and ``movedim`` are permutations, so
  affine.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..neurons.function_neuron import FunctionNeuron
from ..neurons.mbe import MBENeuron
from ..neurons.mbe_functions import ScalarFunction, is_decomposed
from ..neurons.product_layer import SpikingProduct
from ..neurons.products import ProductKind
from .decompositions import (DecomposedAttention, DecomposedEinsum, DecomposedLayerNorm, DecomposedLayerNormFunction,
                             DecomposedMultiheadAttention, DecomposedNormalize, DecomposedSoftmax, Division,
                             HardSigmoidAsReLU6)
from .pooling import Amax, RateMaxPool
from .rules import OperationCost, Role, Rule, function_rule, method_rule, module_rule, register, register_cost
from .window_attention import DecomposedShiftedWindowAttention, PatchMergingGather

__all__ = ["site_function", "fit_function_site"]

_MODULE_FUNCTIONS = {nn.SiLU: ScalarFunction.SILU, nn.Sigmoid: ScalarFunction.SIGMOID, nn.Tanh: ScalarFunction.TANH,
                     nn.Hardswish: ScalarFunction.HARDSWISH}
_CALL_FUNCTIONS = {F.silu: ScalarFunction.SILU, torch.sigmoid: ScalarFunction.SIGMOID,
                   F.sigmoid: ScalarFunction.SIGMOID, torch.tanh: ScalarFunction.TANH, F.tanh: ScalarFunction.TANH,
                   F.hardswish: ScalarFunction.HARDSWISH, torch.exp: ScalarFunction.EXP,
                   torch.reciprocal: ScalarFunction.RECIPROCAL, torch.rsqrt: ScalarFunction.RSQRT}
_METHOD_FUNCTIONS = {"sigmoid": ScalarFunction.SIGMOID, "tanh": ScalarFunction.TANH, "exp": ScalarFunction.EXP,
                     "reciprocal": ScalarFunction.RECIPROCAL, "rsqrt": ScalarFunction.RSQRT}


def _gelu(approximate: str) -> ScalarFunction:
    return ScalarFunction.GELU_TANH if approximate == "tanh" else ScalarFunction.GELU


def site_function(gm, node) -> ScalarFunction:
    """The scalar function a fitted call site computes."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.GELU):
            return _gelu(module.approximate)
        return _MODULE_FUNCTIONS[type(module)]
    if node.op == "call_function":
        if node.target is F.gelu:
            return _gelu(node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none"))
        return _CALL_FUNCTIONS[node.target]
    return _METHOD_FUNCTIONS[node.target]


def fit_function_site(gm, node, samples, config) -> FunctionNeuron:
    """Fit the site's function for every T of ``config.function_time_steps`` (cached)."""
    from ..neurons.mbe_fit import fit_mbe
    function = site_function(gm, node)
    if is_decomposed(function):
        samples = None
    elif samples is None:
        raise ValueError(f"{function.value} is fitted over the inputs seen on calibration data; pass "
                         "calibration_data= to convert()")
    neurons = {}
    for steps in config.function_time_steps:
        fit = fit_mbe(function, bases=config.bases, time_steps=steps, samples=samples)
        neurons[steps] = MBENeuron(fit.parameters.to(dtype=torch.get_default_dtype()), function=function.value)
    return FunctionNeuron(function, neurons)


def function_site_skeleton(gm, node, config) -> FunctionNeuron:
    """The layer :func:`fit_function_site` builds, with placeholder MBE parameters of the same
    shapes (one neuron of ``config.bases`` bases per T of ``config.function_time_steps``): the
    skeleton a saved network's state dict is loaded into (:func:`parasnn.io.checkpoint.load_snn`),
    so loading needs no calibration data and refits nothing. Its outputs mean nothing until
    the fitted parameters are loaded."""
    from ..neurons.mbe import MBEParameters
    function = site_function(gm, node)
    bases, dtype = config.bases, torch.get_default_dtype()
    neurons = {}
    for steps in config.function_time_steps:
        ones = torch.ones(bases, steps, dtype=dtype)
        parameters = MBEParameters(input_scale=torch.ones(bases, dtype=dtype), input_shift=torch.zeros(bases, dtype=dtype),
                                   threshold=ones, reset=ones.clone(), intensity=ones.clone(),
                                   weight=torch.zeros(bases, dtype=dtype), output_bias=torch.zeros((), dtype=dtype))
        neurons[steps] = MBENeuron(parameters, function=function.value)
    return FunctionNeuron(function, neurons)


def _both_carry(node, dependent) -> bool:
    return len(node.args) >= 2 and all(arg in dependent for arg in node.args[:2])


def _divisor_carries(node, dependent) -> bool:
    return len(node.args) >= 2 and node.args[1] in dependent


def _softmax_dim(node) -> int:
    if node.op == "call_module":
        return node.graph.owning_module.get_submodule(node.target).dim
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if not isinstance(dim, int):
        raise ValueError("softmax needs a constant integer dim")
    return dim


def _attention(gm, node):
    scale = node.kwargs.get("scale")
    if node.kwargs.get("dropout_p", 0.0) or (len(node.args) > 4 and node.args[4]):
        raise ValueError("scaled_dot_product_attention with dropout cannot convert; evaluate the model in eval mode")
    return DecomposedAttention(scale=scale, is_causal=bool(node.kwargs.get("is_causal", False)))


def _normalize(gm, node):
    argument = lambda index, name, default: node.kwargs.get(name, node.args[index] if len(node.args) > index else default)  # noqa: E731
    if argument(1, "p", 2.0) != 2:
        raise ValueError("F.normalize converts for p = 2 only")
    return DecomposedNormalize(dim=argument(2, "dim", 1), eps=argument(3, "eps", 1e-12))


def _torchvision_function(name: str):
    """Claims calls of torchvision's fx-wrapped function ``name`` that carry activations
    (matched by name and module, so parasnn does not import torchvision)."""
    def matches(gm, node, dependent):
        return node.op == "call_function" and node in dependent and getattr(node.target, "__name__", None) == name \
            and str(getattr(node.target, "__module__", "")).startswith("torchvision")
    return matches


def _einsum_operands(node) -> list:
    if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)):  # einsum(equation, [a, b])
        return list(node.args[1])
    return list(node.args[1:])


def _einsum_of_two_activations(node, dependent) -> bool:
    # the varargs form einsum(equation, a, b), both spike-coded: a product
    return len(node.args) == 3 and all(arg in dependent for arg in node.args[1:])


def _einsum_of_one_activation(node, dependent) -> bool:
    # linear in its only spike-coded operand
    return sum(arg in dependent for arg in _einsum_operands(node)) == 1


def _amax(gm, node):
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else ())
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    return RateMaxPool(Amax(dim, keepdim))


def _product_cost(module: SpikingProduct, inputs, output) -> OperationCost:
    left, right = inputs
    per_sample = output.numel() // output.shape[0]
    inner = left.shape[-1] if module.kind is ProductKind.MATMUL else 1
    return OperationCost(elementwise=per_sample * inner, ann_elementwise=per_sample * inner)


def _function_cost(module: FunctionNeuron, inputs, output) -> OperationCost:
    # the weighted sum of the N bases' outputs (and the recomposition), per element
    bases = next(iter(module.neurons.values())).bases
    return OperationCost(elementwise=output.numel() // output.shape[0] * bases)


_MULTIPLY = {operator.mul, operator.imul, torch.mul}
_MATMUL = {operator.matmul, torch.matmul, torch.bmm}
_FITTED_FUNCTIONS = set(_CALL_FUNCTIONS) | {F.gelu}

register(module_rule("multi-basis function", (nn.GELU, *_MODULE_FUNCTIONS), Role.FITTED, fit=fit_function_site,
                     fit_group=site_function, skeleton=function_site_skeleton))
register(function_rule("multi-basis function call", _FITTED_FUNCTIONS, Role.FITTED, fit=fit_function_site,
                       fit_group=site_function, skeleton=function_site_skeleton))
register(method_rule("multi-basis function method", _METHOD_FUNCTIONS, Role.FITTED, fit=fit_function_site,
                     fit_group=site_function, skeleton=function_site_skeleton))
register(function_rule("product of activations", _MULTIPLY, Role.SPIKING, when=_both_carry, inputs=(0, 1),
                       build=lambda gm, node: SpikingProduct(ProductKind.ELEMENTWISE)))
register(method_rule("product of activations (method)", {"mul", "mul_"}, Role.SPIKING, when=_both_carry,
                     inputs=(0, 1), build=lambda gm, node: SpikingProduct(ProductKind.ELEMENTWISE)))
register(function_rule("matrix product of activations", _MATMUL, Role.SPIKING, when=_both_carry, inputs=(0, 1),
                       build=lambda gm, node: SpikingProduct(ProductKind.MATMUL)))
register(method_rule("matrix product of activations (method)", {"matmul", "bmm"}, Role.SPIKING, when=_both_carry,
                     inputs=(0, 1), build=lambda gm, node: SpikingProduct(ProductKind.MATMUL)))
register(function_rule("max of rates", {torch.amax}, Role.SPIKING, build=_amax))
register(method_rule("max of rates (method)", {"amax"}, Role.SPIKING, build=_amax))
register(function_rule("division by an activation", {operator.truediv, torch.div}, Role.EXPANDED,
                       when=_divisor_carries, build=lambda gm, node: Division(), inputs=(0, 1)))
register(module_rule("softmax", (nn.Softmax,), Role.EXPANDED,
                     build=lambda gm, node: DecomposedSoftmax(_softmax_dim(node))))
register(function_rule("softmax function", {F.softmax, torch.softmax}, Role.EXPANDED, inputs=(0,),
                       build=lambda gm, node: DecomposedSoftmax(_softmax_dim(node))))
register(method_rule("softmax method", {"softmax"}, Role.EXPANDED, inputs=(0,),
                     build=lambda gm, node: DecomposedSoftmax(_softmax_dim(node))))
register(module_rule("layer norm", (nn.LayerNorm,), Role.EXPANDED,
                     build=lambda gm, node: DecomposedLayerNorm(gm.get_submodule(node.target))))
register(function_rule("layer norm function", {F.layer_norm}, Role.EXPANDED,
                       build=lambda gm, node: DecomposedLayerNormFunction()))
register(module_rule("multi-head attention", (nn.MultiheadAttention,), Role.EXPANDED, inputs=(0, 1, 2),
                     build=lambda gm, node: DecomposedMultiheadAttention(gm.get_submodule(node.target))))
register(function_rule("scaled dot-product attention", {F.scaled_dot_product_attention}, Role.EXPANDED,
                       inputs=(0, 1, 2, 3), build=_attention))
register(function_rule("L2 normalisation", {F.normalize}, Role.EXPANDED, build=_normalize))
register(module_rule("hardsigmoid", (nn.Hardsigmoid,), Role.EXPANDED, build=lambda gm, node: HardSigmoidAsReLU6()))
register(function_rule("hardsigmoid function", {F.hardsigmoid}, Role.EXPANDED,
                       build=lambda gm, node: HardSigmoidAsReLU6()))
register(function_rule("einsum of two activations", {torch.einsum}, Role.EXPANDED, when=_einsum_of_two_activations,
                       build=lambda gm, node: DecomposedEinsum()))
register(function_rule("einsum with one activation", {torch.einsum}, Role.AFFINE, when=_einsum_of_one_activation))
# permutations of the activations: Swin's cyclic shift, MaxViT's axis swaps
register(function_rule("permutation", {torch.roll, torch.swapaxes, torch.swapdims, torch.movedim}, Role.AFFINE))
register(method_rule("permutation (method)", {"roll", "swapaxes", "swapdims", "movedim"}, Role.AFFINE))
register(Rule("shifted-window attention", Role.EXPANDED, _torchvision_function("shifted_window_attention"),
              build=lambda gm, node: DecomposedShiftedWindowAttention()))
register(Rule("patch merging", Role.EXPANDED, _torchvision_function("_patch_merging_pad"),
              build=lambda gm, node: PatchMergingGather()))
register_cost((SpikingProduct,), _product_cost)
register_cost((FunctionNeuron,), _function_cost)
