"""Transformer operations written as the primitive operations conversion rules claim.

A rule of role ``EXPANDED`` replaces a node by one of these modules, traced and inlined
(:func:`inline_module`), so every primitive becomes its own spiking layer with its own
spikes and costs (docs/maths.md §7):

* softmax = max-subtraction (a max of rates), ``exp``, a sum, ``reciprocal``, a product;
* layer norm = mean, centring, square (a product), mean, ``rsqrt``, a product, the affine γ, β;
* attention = projections, ``Q·Kᵀ`` (a product), scaling, mask, softmax, ``·V`` (a product),
  output projection — for ``nn.MultiheadAttention`` (batch-first or not, no dropout in
  eval) and ``F.scaled_dot_product_attention``.

Each module computes exactly what the ANN operation computes (tested against it), so the
ANN-side network is unchanged until the fitted neurons replace ``exp``, ``reciprocal`` and
``rsqrt``.
"""
from __future__ import annotations

import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

# What a masked attention score becomes. -inf would make the serial form's running means
# undefined (-inf - -inf); after the max-subtraction exp of this value is exactly 0 in
# float32 and float64, as exp(-inf) is, so the ANN's output is unchanged.
MASKED_SCORE = -1e9

__all__ = ["MASKED_SCORE", "HardSigmoidAsReLU6", "Division", "DecomposedNormalize", "DecomposedSoftmax",
           "DecomposedLayerNorm", "DecomposedLayerNormFunction", "DecomposedEinsum", "DecomposedMultiheadAttention",
           "DecomposedAttention",
           "inline_module"]


class HardSigmoidAsReLU6(nn.Module):
    """``hardsigmoid(x) = relu6(x + 3) / 6`` exactly: a ReLU6 site, which IF neurons reproduce."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3.0) / 6.0


class Division(nn.Module):
    """``a / b`` with ``b`` an activation: ``a · reciprocal(b)``."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * torch.reciprocal(b)


class DecomposedNormalize(nn.Module):
    """``F.normalize(x, p=2, dim, eps) = x / max(‖x‖, eps)`` as ``x · rsqrt(Σ x² + eps²)``: equal
    to it wherever ``‖x‖ ≫ eps`` (eps = 1e-12 by default), and free of the max, which has no
    spiking form; a decision (docs/decisions.md)."""

    def __init__(self, *, dim: int = 1, eps: float = 1e-12):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.sum(x * x, dim=self.dim, keepdim=True) + self.eps * self.eps)


class DecomposedSoftmax(nn.Module):
    """``softmax(x, dim)`` as ``e = exp(x − max x)``, ``e · reciprocal(Σ e)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        shifted = x - torch.amax(x, dim=self.dim, keepdim=True)  # ≤ 0: exp stays in (0, 1]
        exponentials = torch.exp(shifted)
        return exponentials * torch.reciprocal(torch.sum(exponentials, dim=self.dim, keepdim=True))


class DecomposedLayerNorm(nn.Module):
    """``layer_norm`` over the last ``len(normalized_shape)`` axes as mean, square, ``rsqrt``
    and products; γ and β are the original parameters."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.axes = tuple(range(-len(norm.normalized_shape), 0))
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: Tensor) -> Tensor:
        return _layer_norm(x, self.axes, self.weight, self.bias, self.eps)


def _layer_norm(x: Tensor, axes: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    centred = x - torch.mean(x, dim=axes, keepdim=True)
    variance = torch.mean(centred * centred, dim=axes, keepdim=True)
    normalised = centred * torch.rsqrt(variance + eps)
    if weight is not None:
        normalised = normalised * weight
    if bias is not None:
        normalised = normalised + bias
    return normalised


class DecomposedLayerNormFunction(nn.Module):
    """``F.layer_norm(input, normalized_shape, weight, bias, eps)`` (ConvNeXt's channel
    LayerNorm calls it) decomposed as :class:`DecomposedLayerNorm`."""

    def forward(self, input: Tensor, normalized_shape: list[int], weight: Tensor | None = None,
                bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
        return _layer_norm(input, tuple(range(-len(normalized_shape), 0)), weight, bias, eps)


class DecomposedEinsum(nn.Module):
    """``torch.einsum(equation, left, right)`` of two operands as one matrix product
    (MaxViT's ``"BGHID,BGHJD->BGHIJ"``): labels only one operand has and the output lacks
    are summed first; then each operand is permuted to (shared batch labels, its own output
    labels, contracted labels), flattened to a batch of matrices, multiplied, and the
    result reshaped and permuted to the output's order. No ellipsis, no label repeated
    within one operand (diagonals)."""

    def forward(self, equation: str, left: Tensor, right: Tensor) -> Tensor:
        if "->" not in equation or "." in equation:
            raise ValueError(f"einsum {equation!r}: only explicit equations without '...' convert")
        operands, output = equation.replace(" ", "").split("->")
        a, b = operands.split(",")
        if len(set(a)) < len(a) or len(set(b)) < len(b) or len(set(output)) < len(output):
            raise ValueError(f"einsum {equation!r}: a label repeated within one term (a diagonal) does not convert")
        left, a = _sum_out(left, a, b + output)
        right, b = _sum_out(right, b, a + output)
        batch = [label for label in output if label in a and label in b]
        rows = [label for label in output if label in a and label not in b]
        columns = [label for label in output if label in b and label not in a]
        inner = [label for label in a if label in b and label not in output]
        size = {label: right.shape[i] for i, label in enumerate(b)}
        size.update({label: left.shape[i] for i, label in enumerate(a)})
        batch_sizes = [size[label] for label in batch]
        left = left.permute([a.index(label) for label in batch + rows + inner]).reshape(
            *batch_sizes, _product(size, rows), _product(size, inner))
        right = right.permute([b.index(label) for label in batch + inner + columns]).reshape(
            *batch_sizes, _product(size, inner), _product(size, columns))
        result = torch.matmul(left, right).reshape(*batch_sizes, *[size[label] for label in rows + columns])
        order = batch + rows + columns
        return result.permute([order.index(label) for label in output])


def _sum_out(x: Tensor, labels: str, elsewhere: str) -> tuple[Tensor, str]:
    """``x`` summed over its labels found nowhere else, and its remaining labels."""
    alone = [index for index, label in enumerate(labels) if label not in elsewhere]
    if not alone:
        return x, labels
    return torch.sum(x, dim=alone), "".join(label for label in labels if label in elsewhere)


def _product(size: dict, labels: list[str]):
    total = 1
    for label in labels:
        total = total * size[label]
    return total


class DecomposedAttention(nn.Module):
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0, is_causal=False,
    scale=None)`` in eval: ``softmax(q·kᵀ·scale + mask)·v`` with explicit products."""

    def __init__(self, *, scale: float | None = None, is_causal: bool = False):
        super().__init__()
        self.scale, self.is_causal = scale, is_causal
        self.softmax = DecomposedSoftmax(-1)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        scale = self.scale if self.scale is not None else query.size(-1) ** -0.5
        scores = torch.matmul(query, key.transpose(-2, -1)) * scale
        if self.is_causal:
            causal = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
            scores = scores + torch.zeros_like(causal, dtype=scores.dtype).masked_fill(~causal, MASKED_SCORE)
        if attn_mask is not None:  # additive (a boolean mask is turned additive before it comes here)
            scores = scores + attn_mask
        return torch.matmul(self.softmax(scores), value)


class DecomposedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` in eval with one packed input projection (query, key and
    value of the same size), returning ``(output, None)`` as the module does with
    ``need_weights=False``. The projections reuse the module's parameters."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
            raise ValueError("nn.MultiheadAttention with kdim/vdim different from embed_dim is not supported")
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
        self.heads, self.batch_first, self.embed = attention.num_heads, attention.batch_first, attention.embed_dim
        self.in_proj_weight, self.in_proj_bias = attention.in_proj_weight, attention.in_proj_bias
        self.out_proj = attention.out_proj
        self.attention = DecomposedAttention()

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, length, embed = query.size(0), query.size(1), self.embed
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3

        def heads(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
            # (B, L, E) -> (B, heads, L, E / heads)
            return F.linear(x, weight, bias).reshape(batch, -1, self.heads, embed // self.heads).transpose(1, 2)

        mask = None
        if key_padding_mask is not None:  # (B, S), True = ignore -> additive (B, 1, 1, S)
            mask = torch.zeros_like(key_padding_mask, dtype=query.dtype).masked_fill(
                key_padding_mask.bool(), MASKED_SCORE)[:, None, None, :]
        if attn_mask is not None:  # additive float mask
            mask = attn_mask if mask is None else mask + attn_mask
        output = self.attention(heads(query, weight_q, bias_q), heads(key, weight_k, bias_k),
                                heads(value, weight_v, bias_v), mask)
        output = self.out_proj(output.transpose(1, 2).reshape(batch, length, embed))  # (B, L, E)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return output, None


_GUARDS = (torch.fx._symbolic_trace._assert_is_none, torch._assert)


class _ConstantList(list):
    """A constant list argument of an inlined module (see :func:`inline_module`)."""


class _ConstantTuple(tuple):
    """A constant tuple argument of an inlined module (see :func:`inline_module`)."""


def _whole(value: object) -> object:
    # fx stores node arguments as its own immutable list type: test by isinstance
    if isinstance(value, list):
        return _ConstantList(value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # a namedtuple keeps its type
        return _ConstantTuple(value)
    return value


def _guard_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The guards fx adds for constant arguments (``torch._assert(x == 7)``) and the nodes
    that only feed them."""
    guards: set[fx.Node] = set()
    for inner in reversed(graph.nodes):
        if inner.op == "call_function" and inner.target in _GUARDS:
            guards.add(inner)
        elif inner.op not in ("placeholder", "output") and inner.users and all(u in guards for u in inner.users):
            guards.add(inner)
    return guards


def inline_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, *, prefix: str) -> None:
    """Replace ``node`` in ``gm`` (in place) by the traced graph of ``module``, whose forward
    takes the node's positional arguments (then its keyword arguments). The module's
    parameters and submodules are attached under the attribute ``prefix``."""
    import inspect

    from .graph import trace
    parameters = list(inspect.signature(module.forward).parameters.values())
    bound: dict[str, object] = {}
    for index, parameter in enumerate(parameters):
        if index < len(node.args):
            bound[parameter.name] = node.args[index]
        elif parameter.name in node.kwargs:
            bound[parameter.name] = node.kwargs[parameter.name]
        elif parameter.default is not inspect.Parameter.empty:
            bound[parameter.name] = parameter.default
        else:
            raise ValueError(f"inline_module: no value for argument {parameter.name!r} of {type(module).__name__}")
    # Constants (None masks, flags) are fixed while tracing, so the decomposition's
    # `if mask is not None` needs no tensor-valued control flow.
    # A constant list or tuple (a window size) is passed as a subclass, which fx keeps whole
    # (one placeholder, no guard) instead of flattening it into one placeholder per element.
    constants = {name: _whole(value) for name, value in bound.items() if not isinstance(value, fx.Node)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Was not able to add assertion")
        sub = trace(module, concrete_args=constants)
    gm.add_submodule(prefix, sub)
    values: dict[fx.Node, object] = {}
    # one placeholder per forward argument, in order (fx renames those it fixed to constants)
    for placeholder, name in zip((n for n in sub.graph.nodes if n.op == "placeholder"), bound):
        values[placeholder] = bound[name]
    guards = _guard_nodes(sub.graph)
    result = None
    with gm.graph.inserting_before(node):
        for inner in sub.graph.nodes:
            if inner.op == "placeholder" or inner in guards:
                continue  # the guards fx adds for the constants fixed above
            if inner.op == "output":
                result = fx.map_arg(inner.args[0], lambda n: values[n])
                break
            copied = gm.graph.node_copy(inner, lambda n: values[n])
            if inner.op in ("call_module", "get_attr"):
                copied.target = f"{prefix}.{inner.target}"
            copied.meta = {**inner.meta, "nn_module_stack": node.meta.get("nn_module_stack", {})}
            values[inner] = copied
    if isinstance(result, fx.Node):
        node.replace_all_uses_with(result)
    else:  # a tuple such as (output, None): uses index into it
        for user in list(node.users):
            if user.op == "call_function" and user.args[0] is node and isinstance(user.args[1], int):
                replacement = result[user.args[1]]
                if isinstance(replacement, fx.Node) or not user.users:  # e.g. the unused `None` weights
                    if isinstance(replacement, fx.Node):
                        user.replace_all_uses_with(replacement)
                    gm.graph.erase_node(user)
                    continue
            raise ValueError(f"inline_module: {type(module).__name__} returns a tuple used other than by "
                             "indexing with a constant")
    gm.graph.erase_node(node)
