"""Firing rates, synaptic operations and an energy estimate per layer (docs/maths.md §8).

Counting rules (decisions, stated so results can be compared):

* A **synaptic layer** is a conv or linear layer. Its MACs are those of the ANN for one
  sample (for a conv: output elements × in_channels/groups × kernel size).
* A synaptic layer whose input reaches back to the network input without passing a neuron
  receives analog values: it costs its **MACs once** per inference — the input is constant
  over the T steps, so its current is computed once and integrated T times.
* Any other synaptic layer is driven by spikes: each spike costs one accumulate per
  fan-out connection, estimated as ``SOPs = MACs × (spikes per upstream neuron over the
  window)`` — the usual ``MACs × T × firing rate``. With several upstream neuron layers
  (a residual sum) their rates are averaged, weighted by neuron count. A multi-spike
  counts as its number of spikes; a negative spike counts as one spike.
* Energy uses 45 nm constants: ``E_AC = 0.9 pJ``, ``E_MAC = 4.6 pJ``. The ANN costs
  ``Σ MACs × E_MAC``; pooling, batch norm (foldable) and neuron updates are not counted.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch.fx as fx
from torch import Tensor

from ..conversion.rules import OperationCost, has_cost, operation_cost
from ..conversion.network import SpikingNetwork, forward_hooks
from ..neurons.base import SpikingNeuron
from ..simulation.forms import SimulationResult

__all__ = ["E_AC_PJ", "E_MAC_PJ", "LayerActivity", "LayerCost", "ActivityReport", "synaptic_macs", "layer_costs",
           "ActivityMeter", "measure_activity", "cost_report"]

E_AC_PJ = 0.9
E_MAC_PJ = 4.6


@dataclasses.dataclass
class LayerActivity:
    """One neuron layer: ``neurons`` per sample, ``spikes`` per sample (summed over T),
    ``silent`` = fraction of neurons that never fired, ``firing_rate`` = spikes per neuron
    per time step."""

    name: str
    neurons: int
    spikes: float
    silent: float
    time_steps: int

    @property
    def firing_rate(self) -> float:
        return self.spikes / max(self.neurons, 1) / self.time_steps


@dataclasses.dataclass
class LayerCost:
    name: str
    macs: int  # ANN multiply-accumulates per sample
    sops: float  # SNN synaptic operations per sample (0 for analog-input layers)
    analog_input: bool
    elementwise: int = 0  # multiply-accumulates the SNN pays whatever the spikes (products, MBE sums)
    ann_elementwise: int = 0  # of those, what the ANN pays too (the products)

    @property
    def ann_energy_pj(self) -> float:
        return (self.macs + self.ann_elementwise) * E_MAC_PJ

    @property
    def snn_energy_pj(self) -> float:
        synaptic = self.macs * E_MAC_PJ if self.analog_input else self.sops * E_AC_PJ
        return synaptic + self.elementwise * E_MAC_PJ


@dataclasses.dataclass
class ActivityReport:
    time_steps: int
    samples: int
    layers: list[LayerActivity]
    costs: list[LayerCost]

    @property
    def ann_energy_pj(self) -> float:
        return sum(c.ann_energy_pj for c in self.costs)

    @property
    def snn_energy_pj(self) -> float:
        return sum(c.snn_energy_pj for c in self.costs)

    @property
    def total_sops(self) -> float:
        return sum(c.sops for c in self.costs)

    @property
    def total_macs(self) -> int:
        return sum(c.macs for c in self.costs)

    def to_dict(self) -> dict:
        return {
            "time_steps": self.time_steps, "samples": self.samples,
            "neurons": [dict(dataclasses.asdict(a), firing_rate=a.firing_rate) for a in self.layers],
            "synapses": [dict(dataclasses.asdict(c), ann_energy_pj=c.ann_energy_pj, snn_energy_pj=c.snn_energy_pj)
                         for c in self.costs],
            "ann_energy_pj": self.ann_energy_pj, "snn_energy_pj": self.snn_energy_pj,
            "total_macs": self.total_macs, "total_sops": self.total_sops,
        }


def layer_costs(network: SpikingNetwork, *inputs: Tensor, time_steps: int = 1) -> dict[str, OperationCost]:
    """Operations per sample of every layer with a registered cost (graph order), measured
    with one forward pass (costs are registered with the conversion rules,
    :func:`parasnn.conversion.rules.register_cost`)."""
    costs: dict[str, OperationCost] = {}
    gm = network.graph_module
    layers = [(node.target, gm.get_submodule(node.target)) for node in gm.graph.nodes
              if node.op == "call_module" and has_cost(gm.get_submodule(node.target))]
    hooks = [(module, lambda m, args, out, path=path: costs.__setitem__(path, operation_cost(m, args, out)))
             for path, module in layers]
    with forward_hooks(hooks):
        network(*inputs, time_steps=time_steps)
    return costs


def synaptic_macs(network: SpikingNetwork, *inputs: Tensor, time_steps: int = 1) -> dict[str, int]:
    """MACs per sample of every synaptic layer (graph order), measured with one forward pass."""
    return {path: cost.synaptic for path, cost in layer_costs(network, *inputs, time_steps=time_steps).items()
            if cost.synaptic}


def _upstream_neurons(gm: fx.GraphModule, node: fx.Node) -> tuple[set[str], bool]:
    """Neuron layers whose spikes reach ``node``'s input, and whether any analog path does."""
    neurons: set[str] = set()
    analog = False
    stack, seen = list(node.all_input_nodes), set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            analog = analog or current.name != "time_steps"
            continue
        if current.op == "call_module":
            module = gm.get_submodule(current.target)
            if isinstance(module, SpikingNeuron):
                neurons.add(current.target)
                continue
            if has_cost(module):
                analog = True  # a synaptic layer's output is a current, not spikes
                continue
        stack.extend(current.all_input_nodes)
    return neurons, analog


def cost_report(network: SpikingNetwork, layers: list[LayerActivity], macs: dict[str, int],
                elementwise: dict[str, OperationCost] | None = None) -> list[LayerCost]:
    """Per layer MACs, SOPs and elementwise operations from measured neuron activity (rules
    in the module doc); ``elementwise``: the layers' registered costs, when known."""
    activity = {layer.name: layer for layer in layers}
    elementwise = elementwise or {}
    gm = network.graph_module
    costs = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        extra = elementwise.get(node.target, OperationCost())
        if node.target not in macs:
            if extra.elementwise:
                costs.append(LayerCost(node.target, 0, 0.0, analog_input=False, elementwise=extra.elementwise,
                                       ann_elementwise=extra.ann_elementwise))
            continue
        upstream, analog = _upstream_neurons(gm, node)
        if analog or not upstream:
            costs.append(LayerCost(node.target, macs[node.target], 0.0, analog_input=True))
            continue
        neurons = sum(activity[name].neurons for name in upstream if name in activity)
        spikes = sum(activity[name].spikes for name in upstream if name in activity)
        costs.append(LayerCost(node.target, macs[node.target], macs[node.target] * spikes / max(neurons, 1),
                               analog_input=False))
    return costs


class ActivityMeter:
    """Accumulates spike counts over batches; :meth:`report` turns them into an
    :class:`ActivityReport`. Feed it the ``spike_counts`` of a simulation result."""

    def __init__(self, network: SpikingNetwork, *, time_steps: int):
        self.network, self.time_steps = network, time_steps
        self.totals: dict[str, list] = {}  # path -> [neurons per sample, spikes, silent, samples]
        self.macs: dict[str, int] | None = None
        self.operations: dict[str, OperationCost] = {}

    def add(self, inputs: Tensor | tuple[Tensor, ...], counts: dict[str, Tensor]) -> None:
        """``inputs``: the batch's input, or a tuple of the inputs of a model of several."""
        if self.macs is None:
            first = tuple(x[:1] for x in inputs) if isinstance(inputs, (tuple, list)) else (inputs[:1],)
            self.operations = layer_costs(self.network, *first, time_steps=self.time_steps)
            self.macs = {path: cost.synaptic for path, cost in self.operations.items() if cost.synaptic}
        for path, count in counts.items():
            entry = self.totals.setdefault(path, [count[0].numel(), 0.0, 0.0, 0])
            entry[1] += float(count.abs().sum())
            entry[2] += float((count == 0).sum())
            entry[3] += count.shape[0]

    def report(self) -> ActivityReport:
        if self.macs is None:
            raise ValueError("ActivityMeter.report: no batches were added")
        order = [path for path, _ in self.network.neurons()]
        layers = [LayerActivity(path, neurons, spikes / samples, silent / (neurons * samples), self.time_steps)
                  for path, (neurons, spikes, silent, samples) in sorted(self.totals.items(),
                                                                         key=lambda item: order.index(item[0]))]
        samples = next(iter(self.totals.values()))[3] if self.totals else 0
        return ActivityReport(self.time_steps, samples, layers,
                              cost_report(self.network, layers, self.macs, self.operations))


def measure_activity(simulation: Callable[..., SimulationResult], network: SpikingNetwork, batches: Iterable, *,
                     time_steps: int) -> ActivityReport:
    """Firing rates and costs of ``network`` over ``batches`` (tensors or ``(inputs, labels)``),
    run by ``simulation`` — :func:`~parasnn.simulation.forms.parallel_simulation` or
    :func:`~parasnn.simulation.forms.serial_simulation`."""
    meter = ActivityMeter(network, time_steps=time_steps)
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        meter.add(x, simulation(network, x, time_steps=time_steps).spike_counts)
    return meter.report()
