"""The converted network: a torch.fx graph whose activations are spiking neurons.

:class:`SpikingNetwork` holds the graph and what it was made from. Calling it runs the
**parallel** form (:func:`parasnn.simulation.forms.parallel_forward`); the serial form and spike
trains are functions in :mod:`parasnn.simulation.forms`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..datasets.batches import model_inputs
from ..neurons.base import SpikingNeuron
from ..neurons.integrate_fire import check_time_steps

__all__ = ["SpikingNetwork", "check_input", "device_of", "observe", "synchronize"]


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module without tensors)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def observe(model: nn.Module, batches: Iterable, hooks: Iterable[tuple[nn.Module, Callable]], *,
            description: str | None = None) -> None:
    """Run ``batches`` (tensors or ``(inputs, labels)``) through ``model`` in eval mode without
    gradients, with the forward ``hooks`` ``(module, hook(module, args, output))`` attached; the
    hooks see what they record. Afterwards the hooks are removed and the model's mode restored,
    whatever happened. ``description``: show a progress bar with this label."""
    from ..runtime.progress import progress
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    was_training = model.training
    device = device_of(model)
    model.eval()
    try:
        with torch.no_grad():
            for batch in (progress(batches, description=description) if description else batches):
                model(*(x.to(device) for x in model_inputs(batch)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings must not stop before the kernels do); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_input(inputs: tuple[Tensor, ...], *, where: str) -> None:
    """Reject non-tensor, NaN or infinite inputs with a message that says where (the value check
    is skipped while torch.export or torch.compile traces the network)."""
    for index, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: input {index} must be a tensor, got {type(x).__name__}")
        # Under torch.export/compile the values are symbolic: a value check cannot be traced.
        if (x.is_floating_point() and not torch.compiler.is_compiling()
                and not bool(torch.isfinite(x).all())):
            raise ValueError(f"{where}: input {index} contains NaN or infinite values; clean the data first")


class SpikingNetwork(nn.Module):
    """A spiking network produced by :func:`parasnn.conversion.stages.convert`.

    ``network(x, time_steps=T)`` runs the parallel form: one pass, input ``(B, ...)``,
    output the time-averaged network output ``(B, ...)`` (e.g. logits averaged over the
    T steps). Memory and cost do not grow with T.

    Attributes:
        graph_module: the converted torch.fx graph; its first input is ``time_steps``.
        source: class name of the converted model.
        config: the :class:`~parasnn.conversion.stages.ConversionConfig` used.
    """

    def __init__(self, graph_module: fx.GraphModule, *, source: str, config=None):
        super().__init__()
        self.graph_module = graph_module
        self.source = source
        self.config = config
        self.eval()

    def forward(self, *inputs: Tensor, time_steps: int) -> Tensor:
        check_time_steps(time_steps)
        check_input(inputs, where=f"SpikingNetwork({self.source})")
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
