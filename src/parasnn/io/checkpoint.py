"""Checkpoints of trained ANNs and converted SNNs: one self-describing file each.

A checkpoint is a ``torch.save``d dict, loadable with ``weights_only=True`` (no pickled
code), written atomically::

    format: "parasnn"   version: 1   kind: "ann" | "snn"
    model: ModelSpec.to_dict()       architecture, input shape, classes, activation, levels
    state_dict                       weights (and, for an SNN, neuron thresholds and
                                     calibration terms)
    config                           what produced it (training / conversion / calibration)
    ... kind-specific entries (SNN: method, conversion, from_relu)

Loading checks every entry and names the file and the problem: missing file, not a torch
file (corrupt or truncated), another format, or weights that do not fit the architecture.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..conversion.stages import ConversionConfig, convert, quantize_relus
from .files import save_torch
from ..conversion.methods import Method, neuron_factory
from ..zoo.models import ModelSpec, build_model
from ..conversion.network import SpikingNetwork

__all__ = ["CheckpointError", "save_ann", "load_ann", "save_snn", "load_snn", "read_checkpoint", "FORMAT",
           "VERSION"]

FORMAT, VERSION = "parasnn", 1


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names the file and says why."""


def read_checkpoint(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """Load and validate the dict stored in ``path`` (``kind``: expected "ann"/"snn")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" + (
            " (it is a directory; point to the .pt file inside)" if path.is_dir() else ""))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "the file is corrupt or truncated, or not a torch checkpoint. Re-create it (parasnn train / convert)."
        ) from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a parasnn checkpoint (no 'format': 'parasnn' entry); "
                              "plain state dicts can be loaded with torch.load and model.load_state_dict")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}; this parasnn reads {VERSION}")
    for key in ("kind", "model", "state_dict"):
        if key not in data:
            raise CheckpointError(f"checkpoint {path} lacks its '{key}' entry; the file is damaged")
    if kind is not None and data["kind"] != kind:
        hint = {"ann": "a trained network (parasnn train)", "snn": "a converted network (parasnn convert)"}
        raise CheckpointError(f"{path} holds an {data['kind'].upper()}, expected {hint.get(kind, kind)}")
    return data


def _load_state(module: nn.Module, state_dict: dict, path: Path) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights in {path} do not fit the architecture recorded in it:\n{error}") from error


def save_ann(path: str | Path, model: nn.Module, spec: ModelSpec, *, config: dict | None = None,
             metrics: dict | None = None) -> Path:
    """Write a trained ANN checkpoint (atomically)."""
    return save_torch(path, {"format": FORMAT, "version": VERSION, "kind": "ann", "model": spec.to_dict(),
                             "state_dict": model.state_dict(), "config": config or {}, "metrics": metrics or {}})


def load_ann(path: str | Path) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild a trained ANN: ``(model in eval mode, spec, checkpoint dict)``."""
    data = read_checkpoint(path, kind="ann")
    try:
        spec = ModelSpec.from_dict(data["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} has an unreadable model entry: {error}") from error
    model = build_model(spec)
    _load_state(model, data["state_dict"], Path(path))
    return model.eval(), spec, data


def save_snn(path: str | Path, network: SpikingNetwork, spec: ModelSpec, *, method: Method | str = Method.FS_PC,
             from_relu: bool, config: dict | None = None) -> Path:
    """Write a converted (and possibly calibrated) SNN checkpoint (atomically).

    ``from_relu``: the ANN had ReLUs that conversion quantized (their thresholds live in
    the neurons' state, so loading rebuilds the structure with placeholders first).
    """
    conversion = network.config.to_dict() if network.config is not None else ConversionConfig().to_dict()
    return save_torch(path, {"format": FORMAT, "version": VERSION, "kind": "snn", "model": spec.to_dict(),
                             "method": Method(method).value, "conversion": conversion, "from_relu": bool(from_relu),
                             "state_dict": network.state_dict(), "config": config or {}})


def skeleton(spec: ModelSpec, *, method: Method | str, conversion: ConversionConfig, from_relu: bool
             ) -> SpikingNetwork:
    """The converted network of ``spec`` with placeholder thresholds, ready for a state dict."""
    model = build_model(spec).eval()
    if from_relu:
        # Any input of the right shape records *some* threshold; the real ones come from the state dict.
        model = quantize_relus(model, [torch.zeros(1, *spec.input_shape)], levels=conversion.levels,
                               statistic=conversion.threshold)
    return convert(model, config=conversion, neuron=neuron_factory(method))


def load_snn(path: str | Path) -> tuple[SpikingNetwork, ModelSpec, dict]:
    """Rebuild a converted SNN: ``(network, spec, checkpoint dict)``."""
    data = read_checkpoint(path, kind="snn")
    try:
        spec = ModelSpec.from_dict(data["model"])
        conversion = ConversionConfig.from_dict(data["conversion"])
        network = skeleton(spec, method=data["method"], conversion=conversion, from_relu=data["from_relu"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} has an unreadable entry: {error}") from error
    _load_state(network, data["state_dict"], Path(path))
    return network.eval(), spec, data
