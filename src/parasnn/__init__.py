"""parasnn — convert trained PyTorch networks into spiking networks that run in one parallel pass.

>>> from parasnn import convert, parallel_forward, serial_forward
>>> network = convert(qcfs_model)                       # or convert(relu_model, calibration_data=batches)
>>> logits = parallel_forward(network, x, time_steps=4)  # one pass, any T
>>> logits_serial = serial_forward(network, x, time_steps=4)  # T steps, as hardware runs it

The public names below load on first use, so ``parasnn --help`` does not import torch.
The sub-packages are mapped in docs/architecture.md.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import deprecated_paths

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "convert": "conversion.stages", "quantize_relus": "conversion.stages", "ConversionConfig": "conversion.stages",
    "BatchNormMode": "conversion.stages", "ThresholdStatistic": "conversion.stages",
    "ConversionError": "conversion.graph", "Method": "conversion.methods", "SpikingNetwork": "conversion.network",
    "calibrate": "calibration.pipeline", "CalibrationConfig": "calibration.pipeline",
    "save": "io.portable", "load": "io.portable", "NetworkFileError": "io.module_config",
    "QCFS": "neurons.qcfs", "IFNeuron": "neurons.if_neuron", "SpikingNeuron": "neurons.base",
    **{name: "simulation.forms" for name in ("parallel_forward", "parallel_simulation", "serial_forward",
                                             "serial_outputs", "serial_simulation", "serial_step", "spike_counts",
                                             "spike_trains")},
}

__all__ = ["__version__", *_EXPORTS]

deprecated_paths.install()


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'parasnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers see the names without the lazy loading
    from .calibration.pipeline import CalibrationConfig, calibrate
    from .conversion.graph import ConversionError
    from .conversion.methods import Method
    from .conversion.network import SpikingNetwork
    from .io.module_config import NetworkFileError
    from .io.portable import load, save
    from .conversion.stages import BatchNormMode, ConversionConfig, ThresholdStatistic, convert, quantize_relus
    from .neurons import QCFS, IFNeuron, SpikingNeuron
    from .simulation.forms import (parallel_forward, parallel_simulation, serial_forward, serial_outputs,
                                   serial_simulation, serial_step, spike_counts, spike_trains)
