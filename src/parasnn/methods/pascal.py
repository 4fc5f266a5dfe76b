"""PASCAL's serial SNN ([PASCAL], docs/maths.md §5): a layer-pipelined simulation that reproduces the
QCFS ANN exactly, its effective latency ``T_eff``, and its evaluation.

Why a simulator of its own
--------------------------
A PASCAL layer (:class:`~parasnn.neurons.pascal.PascalNeuron`) waits until all of its input
has arrived, corrects its count, and only then emits. The step-synchronous simulator of
:mod:`parasnn.simulation.forms` runs every layer at every step on a constant input, so it cannot
express that. Here the converted fx graph is interpreted **once**, in topological order, and
every value that depends on the input is a *train* over a window of global time steps:

* the network input (analog pixels) is presented **once**, at step 1;
* a PASCAL layer whose input window is ``[a, b]`` (``T_in = b − a + 1`` steps) integrates
  during ``[a, b]``, corrects for ``C = max(T_in, L) − 1`` steps (``b+1 .. b+C``) and emits
  its count over ``[b + C + 1, b + C + L]``;
* every other operation (conv, BN, pooling, adds, flatten, linear, rate max-pool) is
  applied **per step** over the union of its inputs' windows; a spike emitted at step t is
  integrated by the next layer at step t (no synaptic delay).

A train carries a **sum**, not an average: a spike is worth one QCFS quantum ``θ/L`` of its
layer, so ``q`` spikes carry ``q·θ/L`` — the QCFS output — whatever the window's length, and
trains of different lengths (layers with different L, residual shortcuts) add up correctly.
Constant terms (biases, BN shifts) therefore enter once per window, not once per step. The
neuron after a residual add integrates over the union of both branches' windows, so its
``T_in`` — and the paper's ``C`` — can be much longer than either branch's ``L``.

Effective latency
-----------------
``T_eff`` is the number of time steps from the presentation of the input (step 1) to the
last step at which any spike that reaches the network output is emitted — the end of the
latest emission window feeding the output. At that step the (non-spiking) output layer has
received everything, so its value is final. For a chain of layers ``l = 1..N``:

    T_eff = 1 + Σ_l (C_l + L_l),     C_l = max(T_in,l, L_l) − 1,   T_in,1 = 1,  T_in,l = L_{l−1}

e.g. 7 layers with L = 4: ``1 + 7·(3 + 4) = 50``. :class:`LayerSchedule` gives each layer's
windows; ``latency`` is the steps it adds after its input ends (``C_l + L_l``).
With ``correction="sufficient"`` the schedule uses ``C_l = L_l − 1`` (enough for our clipped
rule, see :func:`~parasnn.neurons.pascal.sufficient_correction_steps`).

How inputs are accumulated (``accumulation``)
---------------------------------------------
Summing per-step currents in floating point rounds differently from the ANN's single
evaluation of the same layer, so a pre-activation that sits within a rounding error of a
QCFS level boundary can land on the other side. Two modes, equal in exact arithmetic:

``"inputs"`` (default, bit-exact)
    each synapse keeps the running sum of its input spikes — an integer count times the
    spike's value ``θ/L`` — and every step applies the layer's affine operations to that
    running sum; the membrane charge is ``ψ + L·f(Σ_{τ≤t} x_τ)``. Linearity makes this
    the sum of the per-step currents; evaluating it this way makes the last step's charge
    the very floating-point number the ANN computes, so spike counts equal QCFS levels and
    the logits equal the ANN's, bit for bit.
``"currents"``
    every step applies the affine operations to that step's spikes alone (constant terms
    such as biases enter once, at the first step of the window) and the membrane adds the
    currents one by one, as a naive implementation would. Counts can differ from the QCFS
    levels where the pre-activation is within rounding distance of a level boundary;
    :func:`compare_with_ann` counts such differences.

Energy
------
Only emission spikes leave a neuron; they drive the next synaptic layer's operations
(SOPs) as in :mod:`parasnn.evaluation.energy`. Emitted spikes are all positive here, and every one is
counted (a negative spike would count as one spike too). The ± spikes of the integration
and correction phases change only the neuron's own counter — no synapse is touched — and
are reported separately as internal events (``positive``/``negative``).
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import Tensor

from ..conversion.network import SpikingNetwork, check_input
from ..neurons.base import SerialOp, SpikingNeuron
from ..neurons.pascal import PascalNeuron, correction_steps, emitted_count, sufficient_correction_steps

__all__ = ["Accumulation", "Correction", "LayerSchedule", "PascalSimulationResult", "pascal_simulation",
           "pascal_forward", "schedule", "effective_latency", "compare_with_ann"]


def _option(kind: type[enum.Enum], value, *, name: str):
    """``kind(value)``, or a ValueError that names the option and lists its choices."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"PASCAL: {name} must be one of {[k.value for k in kind]}, got {value!r}") from None


class Accumulation(str, enum.Enum):
    """How a layer's input is accumulated (see the module docstring)."""

    INPUTS = "inputs"
    CURRENTS = "currents"


class Correction(str, enum.Enum):
    """``paper``: ``C = max(T_in, L) − 1`` (docs/maths.md §5); ``sufficient``: ``C = L − 1``."""

    PAPER = "paper"
    SUFFICIENT = "sufficient"


@dataclasses.dataclass(frozen=True)
class LayerSchedule:
    """Timing of one PASCAL layer in global steps (1-based, inclusive windows).

    ``input_start..input_end`` integration window (``input_steps`` = T_in = T_{l−1});
    ``correction`` = C; ``emit_start..emit_end`` emission window of ``levels`` = T_l = L steps.
    """

    name: str
    levels: int
    input_start: int
    input_end: int
    correction: int

    @property
    def input_steps(self) -> int:
        return self.input_end - self.input_start + 1

    @property
    def emit_start(self) -> int:
        return self.input_end + self.correction + 1

    @property
    def emit_end(self) -> int:
        return self.input_end + self.correction + self.levels

    @property
    def latency(self) -> int:
        """Steps this layer adds after its input has ended: ``C + L``."""
        return self.correction + self.levels

    def to_dict(self) -> dict:
        return {"name": self.name, "levels": self.levels, "input_window": [self.input_start, self.input_end],
                "input_steps": self.input_steps, "correction_steps": self.correction,
                "emit_window": [self.emit_start, self.emit_end], "latency": self.latency}


class PascalSimulationResult(NamedTuple):
    """What :func:`pascal_simulation` returns. Per-layer tensors are ``(B, ...)``."""

    output: Tensor  # (B, ...) final network output (e.g. logits), available at step T_eff
    spike_counts: dict[str, Tensor]  # emitted spikes per neuron (= QCFS level), drive the SOPs
    positive: dict[str, Tensor]  # internal positive spikes (integration + correction)
    negative: dict[str, Tensor]  # internal negative (inhibitory) spikes
    schedule: list[LayerSchedule]  # per PASCAL layer, graph order
    effective_latency: int  # T_eff


@dataclasses.dataclass
class _Train:
    """A value over the global steps ``start .. start + len(values) − 1``; ``values`` ``(T, B, ...)``.

    ``cumulative``: each entry is the value accumulated so far (held after the window,
    zero before it); otherwise each entry is that step's increment (zero outside)."""

    start: int
    values: Tensor
    cumulative: bool

    @property
    def end(self) -> int:
        return self.start + self.values.shape[0] - 1

    def at(self, step: int) -> Tensor:
        if step < self.start:
            return torch.zeros_like(self.values[0])
        if step > self.end:
            return self.values[-1] if self.cumulative else torch.zeros_like(self.values[0])
        return self.values[step - self.start]


def _map(value: Any, function) -> Any:
    """Apply ``function`` to every :class:`_Train` inside nested tuples/lists/dicts."""
    if isinstance(value, _Train):
        return function(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(item, function) for item in value)
    if isinstance(value, dict):
        return {key: _map(item, function) for key, item in value.items()}
    return value


def _trains(value: Any) -> list[_Train]:
    found: list[_Train] = []
    _map(value, lambda train: found.append(train) or train)
    return found


def _subtract(value: Any, constant: Any) -> Any:
    """``value − constant`` for tensors, structurally for tuples/lists; other values unchanged."""
    if isinstance(value, Tensor):
        return value - constant
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return type(value)(_subtract(v, c) for v, c in zip(value, constant))
    return value


def _stack(results: list, start: int, cumulative: bool, where: str) -> Any:
    """Per-step results → trains (tensors), tuples of trains, or a plain value that is the same at
    every step (shapes, sizes)."""
    first = results[0]
    if isinstance(first, Tensor):
        return _Train(start, torch.stack(results), cumulative)
    if isinstance(first, (tuple, list)) and not isinstance(first, torch.Size):
        return type(first)(_stack([r[i] for r in results], start, cumulative, where) for i in range(len(first)))
    if all(r == first for r in results):
        return first
    raise ValueError(f"PASCAL simulation: {where} gives a different non-tensor value at each step")


class _PipelinedInterpreter(fx.Interpreter):
    """Interprets a converted graph once, on trains (see the module docstring)."""

    def __init__(self, network: SpikingNetwork, *, accumulation: Accumulation, correction: Correction):
        super().__init__(network.graph_module)
        self.accumulation, self.correction = accumulation, correction
        self.cumulative = accumulation is Accumulation.INPUTS
        self.counts: dict[str, Tensor] = {}
        self.positive: dict[str, Tensor] = {}
        self.negative: dict[str, Tensor] = {}
        self.schedule: list[LayerSchedule] = []
        self.output_end = 1  # T_eff: end of the latest window that reaches the output
        self._placeholders = 0

    def placeholder(self, target, args, kwargs):
        self._placeholders += 1
        value = super().placeholder(target, args, kwargs)
        if self._placeholders == 1:  # ``time_steps``, threaded to neurons; PASCAL layers ignore it
            return value
        # The analog input, presented once at step 1.
        return _Train(1, value.unsqueeze(0), self.cumulative) if isinstance(value, Tensor) else value

    def run_node(self, node: fx.Node) -> Any:
        if node.op in ("placeholder", "output", "get_attr"):
            return super().run_node(node)
        args, kwargs = self.fetch_args_kwargs_from_env(node)
        trains = _trains((args, kwargs))
        if not trains:  # does not depend on the input: evaluate once, as is
            return getattr(self, node.op)(node.target, args, kwargs)
        if node.op == "call_module":
            module = self.fetch_attr(node.target)
            if isinstance(module, PascalNeuron):
                return self._pascal_layer(node.target, module, args[0])
            if isinstance(module, SpikingNeuron):
                raise TypeError(f"PASCAL simulation: layer '{node.target}' is a {type(module).__name__}; convert "
                                "the network with neuron=PascalNeuron.from_qcfs (method 'pascal')")
            if isinstance(module, SerialOp) and not self.cumulative:
                return self._serial_op(module, args[0])
        return self._per_step(node, args, kwargs, trains)

    def _per_step(self, node: fx.Node, args, kwargs, trains: list[_Train]) -> Any:
        """Apply ``node`` at every step of the union of its inputs' windows."""
        start, end = min(t.start for t in trains), max(t.end for t in trains)
        call = getattr(self, node.op)  # call_module / call_function / call_method
        results = []
        for step in range(start, end + 1):
            results.append(call(node.target, _map(args, lambda t: t.at(step)), _map(kwargs, lambda t: t.at(step))))
        if not self.cumulative and end > start:
            # Constant terms (biases, BN shifts) enter once: remove them from every later step.
            zeros = lambda t: torch.zeros_like(t.values[0])  # noqa: E731
            constant = call(node.target, _map(args, zeros), _map(kwargs, zeros))
            results = [results[0]] + [_subtract(result, constant) for result in results[1:]]
        return _stack(results, start, self.cumulative, f"node '{node.name}'")

    def _serial_op(self, module: SerialOp, train: _Train) -> _Train:
        """A non-neuron serial op (rate max-pool) on per-step increments, through its own ``step``."""
        state = module.initial_state(train.values[0], time_steps=train.values.shape[0])
        outputs = []
        for value in train.values:
            state, output = module.step(state, value, time_steps=train.values.shape[0])
            outputs.append(output)
        return _Train(train.start, torch.stack(outputs), False)

    def _pascal_layer(self, name: str, neuron: PascalNeuron, train: _Train) -> _Train:
        if not isinstance(train, _Train):
            raise TypeError(f"PASCAL simulation: layer '{name}' got a {type(train).__name__}, expected its input")
        if self.cumulative:
            charges = neuron.charge(train.values)  # (T_in, B, ...): ψ + L·(accumulated current)
        else:  # sum the currents one step at a time, from the initial charge ψ
            charge = neuron.charge(torch.zeros_like(train.values[0]))
            charges = []
            for current in train.values:
                charge = charge + neuron.levels * current
                charges.append(charge)
            charges = torch.stack(charges)
        steps = train.values.shape[0]
        if self.correction is Correction.PAPER:
            correction = correction_steps(input_steps=steps, output_steps=neuron.levels)
        else:
            correction = sufficient_correction_steps(output_steps=neuron.levels)
        result = neuron.accumulate(charges, correction=correction)
        timing = LayerSchedule(name, neuron.levels, train.start, train.end, correction)
        self.schedule.append(timing)
        self.counts[name], self.positive[name], self.negative[name] = result.count, result.positive, result.negative
        if self.cumulative:  # value sent so far at each emission step: min(k, q)·(θ/L)
            values = [neuron.emitted_value(emitted_count(result.count, step=k)) for k in range(1, neuron.levels + 1)]
        else:  # one spike of value θ/L at each of the first q emission steps
            values = [neuron.emitted_value((result.count >= k).to(result.count.dtype))
                      for k in range(1, neuron.levels + 1)]
        return _Train(timing.emit_start, torch.stack(values), self.cumulative)

    def output(self, target, args, kwargs):
        value = super().output(target, args, kwargs)
        self.output_end = max((t.end for t in _trains(value)), default=1)
        if self.cumulative:
            return _map(value, lambda t: t.values[-1])
        return _map(value, lambda t: _sum_steps(t.values))


def _sum_steps(values: Tensor) -> Tensor:
    total = values[0]
    for value in values[1:]:  # step by step, as the output layer would accumulate
        total = total + value
    return total


def pascal_simulation(network: SpikingNetwork, *inputs: Tensor, time_steps: int | None = None,
                      accumulation: Accumulation | str = Accumulation.INPUTS,
                      correction: Correction | str = Correction.PAPER) -> PascalSimulationResult:
    """Run the layer-pipelined serial PASCAL network on ``inputs`` ``(B, ...)``.

    ``time_steps`` is accepted (and ignored) so the function can stand where
    :func:`parasnn.simulation.forms.serial_simulation` does; PASCAL's timing is fixed by the layers'
    L (``result.effective_latency``). The network must be converted with
    :meth:`PascalNeuron.from_qcfs` (method ``pascal``).
    """
    check_input(inputs, where=f"PASCAL simulation of {network.source}")
    interpreter = _PipelinedInterpreter(network, accumulation=_option(Accumulation, accumulation, name="accumulation"),
                                        correction=_option(Correction, correction, name="correction"))
    with torch.no_grad():
        output = interpreter.run(1, *inputs)
    return PascalSimulationResult(output, interpreter.counts, interpreter.positive, interpreter.negative,
                                  interpreter.schedule, interpreter.output_end)


def pascal_forward(network: SpikingNetwork, *inputs: Tensor, **options) -> Tensor:
    """The output of :func:`pascal_simulation` alone."""
    return pascal_simulation(network, *inputs, **options).output


def schedule(network: SpikingNetwork, *inputs: Tensor, correction: Correction | str = Correction.PAPER
             ) -> tuple[list[LayerSchedule], int]:
    """``(per-layer schedule, T_eff)`` of ``network``; ``inputs`` only need the right shape (one
    sample is enough: the timing does not depend on the values)."""
    result = pascal_simulation(network, *(x[:1] for x in inputs), correction=correction)
    return result.schedule, result.effective_latency


def effective_latency(network: SpikingNetwork, *inputs: Tensor, correction: Correction | str = Correction.PAPER
                      ) -> int:
    """``T_eff`` (module docstring) of ``network`` for inputs shaped like ``inputs``."""
    return schedule(network, *inputs, correction=correction)[1]


# -- comparison and evaluation -------------------------------------------------------------------

def compare_with_ann(network: SpikingNetwork, result: PascalSimulationResult, ann_output: Tensor, *inputs: Tensor
                     ) -> dict[str, Any]:
    """How far a PASCAL run is from the QCFS ANN on the same ``inputs``.

    The QCFS levels come from the parallel form of ``network`` (bit-equal to the ANN's
    QCFS layers, :class:`~parasnn.neurons.pascal.PascalNeuron`). Returns
    ``{"equal_outputs": samples with bit-equal outputs, "equal_predictions": samples with the
    same argmax, "max_abs_difference": ..., "level_mismatches": {layer: neurons whose count
    differs from the QCFS level}}``.
    """
    from ..simulation.forms import parallel_simulation
    levels = parallel_simulation(network, *inputs, time_steps=1).spike_counts
    mismatches = {name: int((result.spike_counts[name] != level).sum()) for name, level in levels.items()}
    flat_snn, flat_ann = result.output.flatten(1), ann_output.flatten(1)
    return {
        "samples": int(ann_output.shape[0]),
        "equal_outputs": int((flat_snn == flat_ann).all(dim=1).sum()),
        "equal_predictions": int((result.output.argmax(1) == ann_output.argmax(1)).sum()),
        "max_abs_difference": float((flat_snn - flat_ann).abs().max()) if flat_ann.numel() else 0.0,
        "level_mismatches": mismatches,
    }


_MOVED_TO_CLI = {"command_evaluate"}
_EVALUATION = {"PascalLayerReport", "PascalEvaluation", "evaluate_pascal", "format_pascal"}


def __getattr__(name: str):
    if name in _EVALUATION:  # their own module since the split; importable from here as before
        from . import pascal_evaluation
        return getattr(pascal_evaluation, name)
    # Deprecated: the command-line code moved to parasnn.cli.pascal (domain modules hold no argparse).
    if name in _MOVED_TO_CLI:
        import importlib
        import warnings
        warnings.warn(f"parasnn.methods.{__name__.rsplit('.', 1)[-1]}.{name} moved to parasnn.cli.pascal.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("parasnn.cli.pascal"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
