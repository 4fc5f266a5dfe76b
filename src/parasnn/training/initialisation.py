"""Starting a QCFS network well: weights from a trained ReLU twin, thresholds from data.

Why (docs/decisions.md, "Training"): QCFS's fixed initial threshold θ = 8 is far from the
range of the pre-activations of a network with BatchNorm (about N(0, 1) at initialisation),
so with L = 4 the first level sits at x = θ/(2L) = 1 and most units start silent; parasnn's
QCFS digits network reached 20 % after 6 epochs where the ReLU twin reached 98 %. Reading θ
off the data removes that, and starting from the ReLU network's weights (what users of QCFS
do) gives a QCFS network close to the ReLU one after a short fine-tuning.

``threshold_percentile`` p: each QCFS site's θ becomes the p-th percentile of ``ReLU(x)``
over its inputs ``x`` (all units of a batch, averaged over batches) — the ReLU network's
activation range at that site [RUECKAUER], as conversion records it for a ReLU network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..datasets.batches import inputs_of
from ..io.checkpoint import CheckpointError, load_ann
from ..neurons.qcfs import MIN_THRESHOLD, QCFS
from ..zoo.models import ModelSpec
from ..runtime.order_statistics import percentile_value

__all__ = ["record_input_ranges", "initialise_thresholds", "load_relu_weights", "SHAPE_FIELDS"]

# What must agree between the ReLU checkpoint and the QCFS network for the weights to carry over.
SHAPE_FIELDS = ("name", "input_shape", "num_classes", "width")


def record_input_ranges(model: nn.Module, batches: Iterable, *, percentile: float) -> dict[str, float]:
    """``{QCFS module path: p-th percentile of ReLU(input)}``, the per-batch percentile averaged
    over ``batches`` (tensors or ``(inputs, labels)`` pairs), at least ``MIN_THRESHOLD``.

    Runs ``model`` as it is (its train/eval mode decides which BatchNorm statistics are used)
    under ``torch.no_grad()``; BatchNorm running statistics are restored afterwards, so
    recording changes nothing in the model."""
    if not 0 < percentile <= 100:
        raise ValueError(f"threshold percentile must be in (0, 100], got {percentile}")
    sites = {path: module for path, module in model.named_modules() if isinstance(module, QCFS)}
    if not sites:
        raise ValueError("initialising thresholds: the network has no QCFS activation")
    sums = {path: 0.0 for path in sites}
    counts = {path: 0 for path in sites}

    def hook_for(path):
        def hook(module, inputs):
            values = inputs[0].detach().flatten().float().clamp(min=0)
            sums[path] += float(percentile_value(values, percentile))
            counts[path] += 1
        return hook

    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    handles = [module.register_forward_pre_hook(hook_for(path)) for path, module in sites.items()]
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            for batch in batches:
                model(inputs_of(batch).to(device))
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
    if not any(counts.values()):
        raise ValueError("initialising thresholds: no batch of training data reached the network")
    return {path: max(sums[path] / counts[path], MIN_THRESHOLD) for path in sites}


def initialise_thresholds(model: nn.Module, batches: Iterable, *, percentile: float) -> dict[str, float]:
    """Set every QCFS θ of ``model`` to :func:`record_input_ranges`; returns the values set."""
    thresholds = record_input_ranges(model, batches, percentile=percentile)
    with torch.no_grad():
        for path, value in thresholds.items():
            model.get_submodule(path).threshold.fill_(value)
    return thresholds


def load_relu_weights(model: nn.Module, spec: ModelSpec, path: str | Path) -> ModelSpec:
    """Copy every weight of the ANN checkpoint at ``path`` (from ``parasnn train``, usually a
    ReLU network) into ``model`` (the QCFS network of ``spec``), all but the QCFS thresholds
    and levels, which the ReLU network does not have. Returns the checkpoint's spec.

    Raises :class:`CheckpointError` (one line) when the file is not an ANN checkpoint or its
    architecture (model, input shape, classes, width) differs from ``spec``."""
    _, source, checkpoint = load_ann(path)  # its own one-line errors for a missing / foreign file
    different = [f"{field} {getattr(source, field)!r} (--init-from) vs {getattr(spec, field)!r} (this run)"
                 for field in SHAPE_FIELDS if getattr(source, field) != getattr(spec, field)]
    if different:
        raise CheckpointError(f"--init-from {path}: another architecture: {'; '.join(different)}; train the ReLU "
                              "network with the same --model, --width and dataset")
    state = {key: value for key, value in checkpoint["state_dict"].items()
             if not (key.endswith(".threshold") or key.endswith("_extra_state"))}
    own = {key for key in model.state_dict()
           if not (key.endswith(".threshold") or key.endswith("_extra_state"))}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise CheckpointError(f"--init-from {path}: its weights do not fit this network (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}); train it with the same --model")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"--init-from {path}: its weights do not fit this network "
                              f"({str(error).splitlines()[-1].strip()})") from None
    return source
