"""parasnn — convert trained PyTorch networks into spiking networks that run in one parallel pass.

>>> from parasnn import convert, parallel_forward, serial_forward
>>> network = convert(qcfs_model)                       # or convert(relu_model, calibration_data=batches)
>>> logits = parallel_forward(network, x, time_steps=4)  # one pass, any T
>>> logits_serial = serial_forward(network, x, time_steps=4)  # T steps, as hardware runs it
"""
from .calibrate import CalibrationConfig, calibrate
from .convert import BatchNormMode, ConversionConfig, ThresholdStatistic, convert, quantize_relus
from .graph import ConversionError
from .methods import Method
from .network import SpikingNetwork
from .neurons import QCFS, IFNeuron, SpikingNeuron
from .simulate import (parallel_forward, parallel_simulation, serial_forward, serial_outputs, serial_simulation,
                       serial_step, spike_counts, spike_trains)

__version__ = "0.1.0"

__all__ = [
    "convert", "quantize_relus", "calibrate", "CalibrationConfig", "Method", "ConversionConfig", "BatchNormMode", "ThresholdStatistic", "ConversionError",
    "SpikingNetwork", "QCFS", "IFNeuron", "SpikingNeuron", "parallel_forward", "serial_forward",
    "parallel_simulation", "serial_simulation", "serial_outputs", "serial_step", "spike_counts", "spike_trains",
]
