"""The converted network: a torch.fx graph whose activations are spiking neurons.

:class:`SpikingNetwork` holds the graph and what it was made from. Calling it runs the
**parallel** form (:func:`parasnn.simulation.forms.parallel_forward`); the serial form and spike
trains are functions in :mod:`parasnn.simulation.forms`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..datasets.batches import model_inputs
from ..neurons.base import SpikingNeuron
from ..neurons.integrate_fire import check_time_steps as neuron_time_steps

__all__ = ["SpikingNetwork", "all_finite", "check_input", "check_time_steps", "expected_inputs", "explain_shape_errors", "device_of", "forward_hooks", "observe",
           "synchronize", "MAX_TIME_STEPS"]

# Spike counts are float32 tensors, which hold every integer exactly only up to 2^24; a
# larger T would also make a serial simulation run for days. (2**64 used to loop forever
# in the serial form and overflow in the parallel one.)
MAX_TIME_STEPS = 2 ** 24


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module without tensors)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]], *, with_kwargs: bool = False):
    """Attach forward ``hooks`` ``(module, hook)`` for the ``with`` block, under ``torch.no_grad``;
    they are removed afterwards, whatever happened. ``with_kwargs``: hooks take
    ``(module, args, kwargs, output)`` (a neuron's ``time_steps`` is a keyword)."""
    handles = [module.register_forward_hook(hook, with_kwargs=with_kwargs) for module, hook in hooks]
    try:
        with torch.no_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()


def observe(model: nn.Module, batches: Iterable, hooks: Iterable[tuple[nn.Module, Callable]], *,
            description: str | None = None) -> None:
    """Run ``batches`` (tensors or ``(inputs, labels)``) through ``model`` in eval mode without
    gradients, with the forward ``hooks`` ``(module, hook(module, args, output))`` attached; the
    hooks see what they record. Afterwards the hooks are removed and the model's mode restored,
    whatever happened. ``description``: show a progress bar with this label."""
    from ..runtime.progress import progress
    was_training = model.training
    device = device_of(model)
    model.eval()
    try:
        with forward_hooks(hooks):
            for batch in (progress(batches, description=description) if description else batches):
                model(*(x.to(device) for x in model_inputs(batch)))
    finally:
        model.train(was_training)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings must not stop before the kernels do); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_time_steps(time_steps, *, where: str = "time_steps") -> int:
    """``time_steps`` (T) if it is an integer in ``1 .. MAX_TIME_STEPS``, else a ValueError."""
    try:
        neuron_time_steps(time_steps)  # the neurons' own check: an integer >= 1
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if time_steps > MAX_TIME_STEPS:
        raise ValueError(f"{where}: time_steps={time_steps} is more than {MAX_TIME_STEPS} (2^24, the largest spike "
                         "count float32 holds exactly); use fewer time steps")
    return time_steps


def expected_inputs(network: "SpikingNetwork") -> list[tuple[int | None, int | None, int | None]]:
    """Per network input: ``(rank, channels, last dim)`` it needs, ``None`` where unknown —
    from the recorded ``input_shape`` when there is one, else from the first layer that
    reads the input (a convolution fixes rank and channels, a linear layer the last dim)."""
    cached = network.__dict__.get("_expected_inputs")
    if cached is not None and cached[0] == network.input_shape:
        return cached[1]
    placeholders = [node for node in network.graph_module.graph.nodes if node.op == "placeholder"][1:]
    expected = []
    for index, node in enumerate(placeholders):
        if network.input_shape is not None and index == 0 and len(placeholders) == 1:
            shape = tuple(network.input_shape)
            expected.append((len(shape) + 1, shape[0] if len(shape) > 1 else None, shape[-1]))
            continue
        rank = channels = last = None
        for user in node.users:
            if user.op != "call_module":
                continue
            layer = network.graph_module.get_submodule(user.target)
            if isinstance(layer, nn.modules.conv._ConvNd):
                rank, channels = layer.weight.dim(), layer.in_channels
            elif isinstance(layer, nn.Linear):
                last = layer.in_features
            break
        expected.append((rank, channels, last))
    network.__dict__["_expected_inputs"] = (network.input_shape, expected)
    return expected


def _describe(rank, channels, last, shape) -> str:
    if shape is not None:
        return "(B, " + ", ".join(str(size) for size in shape) + ")"
    if rank is None:
        return f"(..., {last})" if last is not None else "a tensor"
    middle = {3: "L", 4: "H, W", 5: "D, H, W"}.get(rank, "")
    inner = f"B, {channels if channels is not None else 'C'}" + (f", {middle}" if middle else "")
    return f"({inner})"


def all_finite(x: Tensor) -> bool:
    """Whether every value of the floating-point tensor ``x`` is finite. One reduction to a
    scalar first: a NaN or an infinity makes the sum non-finite, so a finite sum proves the
    tensor finite; only a non-finite sum (bad values, or an overflow of huge ones) needs the
    elementwise test. Cheaper at batch 1 than ``torch.isfinite(x).all()``, which writes a
    mask as large as ``x``."""
    if math.isfinite(float(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def check_input(inputs: tuple[Tensor, ...], *, where: str, network: "SpikingNetwork | None" = None) -> None:
    """Reject what the network cannot take, with a message that says where and what it expects:
    non-tensors, non-floating dtypes, NaN or infinite values and — given ``network`` — the
    wrong number of inputs, a dtype or device other than the network's, and a rank, channel
    count or shape that does not fit its first layer (or its recorded ``input_shape``)."""
    if network is not None:
        expected = expected_inputs(network)
        if len(inputs) != len(expected):
            raise TypeError(f"{where}: takes {len(expected)} input tensor(s), got {len(inputs)}")
    for index, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: input {index} must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            # Integers are token ids or masks for an embedding; a conv or linear layer takes floats.
            feeds_synapses = network is not None and any(value is not None for value in expected[index])
            if x.is_complex() or x.dtype == torch.bool or feeds_synapses or network is None:
                raise ValueError(f"{where}: input {index} has dtype {x.dtype}; the network takes floating-point images "
                                 "(convert with x.float())")
            continue  # integer inputs (token ids, attention masks) have no NaN to check
        # Under torch.export/compile the values are symbolic: a value check cannot be traced.
        if not torch.compiler.is_compiling() and not all_finite(x):
            raise ValueError(f"{where}: input {index} contains NaN or infinite values; clean the data first")
    if network is None:
        return
    reference = next((t for t in network.parameters() if t.is_floating_point()),
                     next((t for t in network.buffers() if t.is_floating_point()), None))
    for index, (x, (rank, channels, last)) in enumerate(zip(inputs, expected)):
        shape = tuple(network.input_shape) if network.input_shape is not None and len(expected) == 1 else None
        wanted = _describe(rank, channels, last, shape)
        if reference is not None and x.is_floating_point() and x.dtype != reference.dtype:
            raise ValueError(f"{where}: input {index} is {x.dtype} but the network's parameters are "
                             f"{reference.dtype}; pass x.to({reference.dtype}) (or convert the network)")
        if reference is not None and x.device != reference.device:
            raise ValueError(f"{where}: input {index} is on {x.device} but the network is on {reference.device}; "
                             f"move one of them (x.to('{reference.device}'))")
        if ((shape is not None and tuple(x.shape[1:]) != shape) or (rank is not None and x.dim() != rank)
                or (channels is not None and (x.dim() < 2 or x.shape[1] != channels))
                or (last is not None and x.shape[-1] != last)):
            raise ValueError(f"{where}: input {index} has shape {tuple(x.shape)}; the network expects {wanted}")


# Words in torch's messages for inputs whose size does not fit a layer (a linear layer's
# "mat1 and mat2 shapes cannot be multiplied", a convolution's "expected input ... channels",
# "size mismatch", "Expected ... dimension").
_SHAPE_WORDS = ("shape", "size", "channels", "dimension")


@contextlib.contextmanager
def explain_shape_errors(inputs: tuple[Tensor, ...], *, where: str):
    """Turn torch's shape errors deep in the graph into a ValueError that states the input
    shapes — for networks whose expected size is not known in advance (``input_shape`` unset,
    e.g. converted from a model whose classifier size depends on the image size)."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not any(word in message.lower() for word in _SHAPE_WORDS):
            raise
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, Tensor))
        raise ValueError(f"{where}: the layers cannot take input(s) of shape {shapes} ({message}); pass inputs of "
                         "the size the network was converted for") from error


class SpikingNetwork(nn.Module):
    """A spiking network produced by :func:`parasnn.conversion.stages.convert`.

    ``network(x, time_steps=T)`` runs the parallel form: one pass, input ``(B, ...)``,
    output the time-averaged network output ``(B, ...)`` (e.g. logits averaged over the
    T steps). Memory and cost do not grow with T.

    Attributes:
        graph_module: the converted torch.fx graph; its first input is ``time_steps``.
        source: class name of the converted model.
        config: the :class:`~parasnn.conversion.stages.ConversionConfig` used.
        input_shape: ``(C, H, W)`` of one example when known, else ``None``.
    """

    def __init__(self, graph_module: fx.GraphModule, *, source: str, config=None,
                 input_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.graph_module = graph_module
        self.source = source
        self.config = config
        # (C, H, W) of one example when known (a loaded checkpoint records it): inputs are
        # checked against it; otherwise against the first layer (see check_input).
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.eval()

    def forward(self, *inputs: Tensor, time_steps: int) -> Tensor:
        check_time_steps(time_steps, where=f"SpikingNetwork({self.source})")
        check_input(inputs, where=f"SpikingNetwork({self.source})", network=self)
        with explain_shape_errors(inputs, where=f"SpikingNetwork({self.source})"):
            return self.graph_module(time_steps, *inputs)

    def neurons(self) -> Iterator[tuple[str, SpikingNeuron]]:
        """``(path, neuron)`` for every neuron layer, in graph order."""
        for node in self.graph_module.graph.nodes:
            if node.op == "call_module":
                module = self.graph_module.get_submodule(node.target)
                if isinstance(module, SpikingNeuron):
                    yield node.target, module

    def extra_repr(self) -> str:
        return f"source={self.source}, neurons={sum(1 for _ in self.neurons())}"
