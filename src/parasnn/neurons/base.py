"""What every spiking layer of a converted network provides.

A converted network runs in two forms (see :mod:`parasnn.simulation.forms`):

* **parallel** — one pass over *time-averaged* quantities. A synaptic layer fed the
  average ``r = (1/T)·Σ_t x_t`` of its inputs outputs the average of its per-step outputs,
  because it is affine. A neuron receives the time-averaged current ``z = U/T`` and returns
  its time-averaged output. No ``(T, ...)`` tensor exists unless someone asks for a train.
* **serial** — ``T`` passes, one per step, as hardware would run the network. Stateful
  layers get their state passed in and return it; nothing is hidden in the module.

:class:`SerialOp` is the serial contract (``initial_state`` / ``step``); every
:class:`SpikingNeuron` is one, and so is the rate max-pool of :mod:`parasnn.conversion.stages`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SerialOp", "SpikingNeuron", "ActivationQuantizer", "per_channel", "load_resizable"]


def per_channel(parameter: Tensor, like: Tensor) -> Tensor:
    """View a scalar or per-channel ``(C,)`` parameter so it broadcasts against ``like``
    of shape ``(B, C, *spatial)`` (channel axis 1), i.e. as ``(C, 1, ..., 1)``."""
    if parameter.dim() == 0:
        return parameter
    if parameter.dim() != 1 or like.dim() < 2 or like.shape[1] != parameter.shape[0]:
        raise ValueError(
            f"per-channel parameter of shape {tuple(parameter.shape)} does not match input of shape "
            f"{tuple(like.shape)}: expected (C,) with C = input.shape[1]"
        )
    return parameter.view(-1, *([1] * (like.dim() - 2)))  # (C, 1, ..., 1)


class ActivationQuantizer(nn.Module):
    """Base class of ANN-side quantized activations (QCFS and its relatives).

    The converter treats every instance as an activation site that a neuron factory turns
    into a :class:`SpikingNeuron` (e.g. :meth:`parasnn.neurons.IFNeuron.from_qcfs`), and
    torch.fx keeps it as one graph node.
    """


class SerialOp(nn.Module):
    """A layer with state in the serial simulation. State is any pytree of tensors.

    A layer may take several inputs (a product of two spiking tensors): the simulator
    passes every input the graph feeds it, in order, to ``forward``, ``initial_state``
    and ``step``. ``takes_time_steps``: whether the converter passes ``time_steps=T`` to
    ``forward`` (the parallel form); ``initial_state`` and ``step`` always receive it.
    """

    takes_time_steps: bool = True

    def initial_state(self, *inputs: Tensor, time_steps: int) -> Any:
        """State before step 1 for inputs shaped like ``inputs`` (each ``(B, ...)``)."""
        raise NotImplementedError

    def step(self, state: Any, *inputs: Tensor, time_steps: int) -> tuple[Any, Tensor]:
        """One step: ``(state, inputs at t)`` → ``(state, output at t)``."""
        raise NotImplementedError

    def spikes_in(self, output: Tensor) -> Tensor | None:
        """Spikes per neuron in one serial step's ``output``, or ``None`` for a layer that
        emits no spikes of its own (it relays or combines its inputs' spikes)."""
        return None

    def step_spikes(self, state: Any, output: Tensor) -> Tensor | None:
        """Spikes per neuron at the step that produced ``state`` and ``output`` (default:
        :meth:`spikes_in` of the output; a layer whose state knows better overrides it)."""
        return self.spikes_in(output)


class SpikingNeuron(SerialOp):
    """Base class of neuron layers. Subclasses implement four pure-maths methods.

    ``forward(current, *, time_steps)``
        parallel form: time-averaged input current ``(B, ...)`` → time-averaged output.
    ``spike_count(current, *, time_steps)``
        spikes per neuron over the window, ``(B, ...)`` (signed for neurons that emit
        negative spikes; a multi-spike counts as its number of spikes).
    ``initial_state`` / ``step``
        the serial form (:class:`SerialOp`); ``step`` returns the layer's output value at
        step t (spikes times their amplitude).
    ``spike_train(current, *, time_steps)``
        the parallel form's spikes, ``(T, B, ...)``, materialised on demand.
    """

    def spike_count(self, current: Tensor, *, time_steps: int) -> Tensor:
        raise NotImplementedError

    def spikes_in(self, output: Tensor) -> Tensor:
        """Number of spikes per neuron in one serial step's ``output`` (default: a spike is
        any non-zero output). Multi-spike neurons override this."""
        return output.ne(0).to(output.dtype)

    def spike_train(self, current: Tensor, *, time_steps: int) -> Tensor:
        raise NotImplementedError


def load_resizable(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Let ``module``'s tensors ``names`` take the shape stored in ``state_dict``.

    Neurons start with scalar calibration terms and become per-channel ``(C,)`` once
    calibrated; a freshly converted network must still load a calibrated checkpoint.
    Call from ``_load_from_state_dict`` before the default loading.
    """
    for name in names:
        key = prefix + name
        current = getattr(module, name)
        if key in state_dict and state_dict[key].shape != current.shape:
            value = torch.zeros_like(state_dict[key], dtype=current.dtype, device=current.device)
            if isinstance(current, nn.Parameter):
                setattr(module, name, nn.Parameter(value, requires_grad=current.requires_grad))
            else:
                setattr(module, name, value)
