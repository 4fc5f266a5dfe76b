"""Neuron maths (pure functions) and the thin layers that hold their parameters."""
from .base import ActivationQuantizer, SerialOp, SpikingNeuron, per_channel
from .if_neuron import IFNeuron
from .integrate_fire import (first_spike_step, fires, if_step, parallel_bias, parallel_conversion_matrix,
                             parallel_if_count, simulate_if, spike_count, spike_count_by_search,
                             spike_train, spike_train_by_matrix)
from .mbe import (MBENeuron, MBEParameters, MBEState, exponential_decay, mbe_forward, mbe_initial_state, mbe_readout,
                  mbe_spike_count, mbe_spike_train, mbe_step, mbe_step_value)
from .mbe_fit import MBEFit, fit_mbe
from .mbe_functions import ScalarFunction
from .pascal import PascalNeuron
from .products import ProductKind, ProductState, decoded_product, product_initial_state, product_step, serial_product
from .pmsm import PolarityMultiSpikeNeuron, PolarityQuantizer
from .qcfs import QCFS, level_value, qcfs, qcfs_level
from .surrogate import floor_ste, heaviside, smoothed_heaviside, triangle

__all__ = [
    "ActivationQuantizer", "SerialOp", "SpikingNeuron", "per_channel", "IFNeuron", "QCFS", "PascalNeuron",
    "PolarityMultiSpikeNeuron", "PolarityQuantizer", "qcfs", "qcfs_level", "level_value",
    "spike_count", "spike_train", "fires", "first_spike_step", "spike_count_by_search",
    "parallel_conversion_matrix", "parallel_bias", "spike_train_by_matrix", "if_step", "simulate_if",
    "parallel_if_count", "floor_ste", "heaviside", "smoothed_heaviside", "triangle",
    "MBENeuron", "MBEParameters", "MBEState", "MBEFit", "ScalarFunction", "fit_mbe", "exponential_decay",
    "mbe_forward", "mbe_initial_state", "mbe_step", "mbe_readout", "mbe_step_value", "mbe_spike_train",
    "mbe_spike_count", "ProductKind", "ProductState", "decoded_product", "product_initial_state", "product_step",
    "serial_product",
]
