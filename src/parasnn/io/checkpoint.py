"""Checkpoints of trained ANNs and converted SNNs: one self-describing file each.

A checkpoint is a ``torch.save``d dict, loadable with ``weights_only=True`` (no pickled
code), written atomically::

    format: "parasnn"   version: 1   kind: "ann" | "snn"
    model: ModelSpec.to_dict()       architecture, input shape, classes, activation, levels
    state_dict                       weights (and, for an SNN, neuron thresholds and
                                     calibration terms)
    config                           what produced it (training / conversion / calibration)
    ... kind-specific entries (SNN: method, conversion, from_relu)

Loading checks every entry and names the file and the problem: missing or empty file, not a
torch file (corrupt or truncated), another format, entries of the wrong type, an implausibly
large input shape, non-finite weights (naming the tensor), invalid quantizer levels (naming
the module), or weights that do not fit the architecture.

An SNN checkpoint records ``ann_fingerprint``: :func:`ann_fingerprint` of the ANN it was
converted from, so ``parasnn evaluate ANN --snn SNN`` can refuse a pair that does not belong
together (:func:`check_snn_matches_ann`). :func:`check_fits_data` compares a checkpoint's
class count and input shape with a data set.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..conversion.stages import ConversionConfig, convert, quantize_relus
from .files import save_torch
from ..conversion.methods import Method, neuron_factory
from ..zoo.models import ModelSpec, build_model
from ..conversion.network import SpikingNetwork

__all__ = ["CheckpointError", "save_ann", "load_ann", "save_snn", "load_snn", "read_checkpoint", "FORMAT",
           "VERSION", "ann_fingerprint", "check_fits_data", "check_snn_matches_ann", "check_finite_tensors",
           "MAX_INPUT_VALUES", "KINDS", "first_line", "load_torch_file"]

FORMAT, VERSION = "parasnn", 1
KINDS = ("ann", "snn")
# Values in one input image: 2^26 (e.g. 3 × 4096 × 4096 ≈ 2^25.6). Above it a recorded
# input_shape is damage or a typo, and building the model would try to allocate the layers
# sized from it (the classifier of a VGG grows with H·W).
MAX_INPUT_VALUES = 2 ** 26


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names the file and says why."""


def first_line(error: BaseException, *, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(error).__name__


def load_torch_file(path: str | Path, *, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`CheckpointError` s for a
    missing, empty, unreadable or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist" + (
            " (it is a directory; point to the .pt file inside)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes), probably from an interrupted copy; "
                              "re-create it (parasnn train / convert)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise CheckpointError(
            f"{what} {path} cannot be read ({type(error).__name__}: {first_line(error)}); "
            "the file is corrupt or truncated, or not a torch checkpoint. Re-create it (parasnn train / convert)."
        ) from error


def check_finite_tensors(tensors: Mapping[str, Any], *, where: str) -> None:
    """Refuse NaN or infinite values in any floating-point tensor, naming the first one."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{where}: tensor '{name}' holds {bad} NaN or infinite value(s); the weights are "
                                  "damaged (or training diverged): re-create the checkpoint")


def read_checkpoint(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """Load and validate the dict stored in ``path`` (``kind``: expected "ann"/"snn")."""
    path = Path(path)
    data = load_torch_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a parasnn checkpoint (no 'format': 'parasnn' entry); "
                              "plain state dicts can be loaded with torch.load and model.load_state_dict")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')!r}; this parasnn reads {VERSION}")
    for key in ("kind", "model", "state_dict"):
        if key not in data:
            raise CheckpointError(f"checkpoint {path} lacks its '{key}' entry; the file is damaged")
    if data["kind"] not in KINDS:
        raise CheckpointError(f"checkpoint {path} has kind {data['kind']!r}; expected one of {', '.join(KINDS)} "
                              "(the file is damaged)")
    for key, expected in (("model", dict), ("state_dict", dict), ("config", dict), ("metrics", dict)):
        if key in data and not isinstance(data[key], expected):
            raise CheckpointError(f"checkpoint {path}: entry '{key}' is {type(data[key]).__name__}, expected a "
                                  f"{expected.__name__}; the file is damaged")
    for name, value in data["state_dict"].items():
        if not isinstance(name, str):
            raise CheckpointError(f"checkpoint {path}: state_dict key {name!r} is not a string; the file is damaged")
    check_finite_tensors(data["state_dict"], where=f"checkpoint {path}")
    if kind is not None and data["kind"] != kind:
        hint = {"ann": "a trained network (parasnn train)", "snn": "a converted network (parasnn convert)"}
        raise CheckpointError(f"{path} holds an {data['kind'].upper()}, expected {hint.get(kind, kind)}")
    return data


def _check_extra_states(module: nn.Module, state_dict: Mapping[str, Any], path: Path) -> None:
    """Quantizer levels in the state dict, checked before loading so the message names the module."""
    from ..neurons.qcfs import QCFS, check_levels
    for name, value in state_dict.items():
        if not name.endswith("_extra_state"):
            continue
        owner = name[: -len("_extra_state")].rstrip(".")
        try:
            target = module.get_submodule(owner)
        except AttributeError:
            continue  # load_state_dict reports unexpected keys
        if isinstance(target, QCFS):
            if not isinstance(value, dict) or "levels" not in value:
                raise CheckpointError(f"checkpoint {path}: module '{owner or '(root)'}' has a damaged quantizer "
                                      f"state {value!r}; re-create the checkpoint")
            try:
                check_levels(value["levels"], where=f"module '{owner}'")
            except ValueError as error:
                raise CheckpointError(f"checkpoint {path}: {error}; re-create the checkpoint") from None


def _load_state(module: nn.Module, state_dict: dict, path: Path) -> None:
    _check_extra_states(module, state_dict, path)
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = "; ".join(lines[1:4] if len(lines) > 1 else lines)[:400]
        raise CheckpointError(
            f"the weights in {path} do not fit the architecture recorded in it ({detail})") from error


def _spec_of(data: dict, path: Path) -> ModelSpec:
    try:
        spec = ModelSpec.from_dict(data["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} has an unreadable model entry: {first_line(error)}") from error
    values = math.prod(spec.input_shape)
    if values > MAX_INPUT_VALUES:
        raise CheckpointError(f"checkpoint {path} records input_shape {tuple(spec.input_shape)} "
                              f"({values:,} values per image, more than the {MAX_INPUT_VALUES:,} parasnn accepts); "
                              "the model entry is damaged: re-create the checkpoint")
    return spec


def _build(spec: ModelSpec, path: Path) -> nn.Module:
    try:
        return build_model(spec)
    except (RuntimeError, MemoryError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: cannot build {spec.name} for input_shape "
                              f"{tuple(spec.input_shape)} ({first_line(error)}); the model entry is damaged") from None


def ann_fingerprint(state_dict: Mapping[str, Any]) -> str:
    """sha256 over an ANN's state-dict tensors — names, dtypes, shapes and bytes, in sorted
    name order — so that an SNN can name the exact ANN it was converted from. Non-tensor
    entries (extra states) are left out: they are configuration, not weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_snn_matches_ann(snn_checkpoint: dict, ann_checkpoint: dict, *, snn_path, ann_path) -> bool:
    """Refuse an SNN converted from another ANN (its recorded fingerprint differs). Returns
    False when the SNN records no fingerprint (written by an older parasnn: not checkable)."""
    recorded = snn_checkpoint.get("ann_fingerprint")
    if recorded is None:
        return False
    actual = ann_fingerprint(ann_checkpoint["state_dict"])
    if recorded != actual:
        raise CheckpointError(f"{snn_path} was converted from another ANN than {ann_path} (ANN fingerprint "
                              f"{recorded[:12]}… recorded, {actual[:12]}… found); pass the ANN it came from, or "
                              f"re-create the SNN from this ANN (parasnn convert {ann_path} --out ...)")
    return True


def check_fits_data(spec: ModelSpec, info, *, path) -> None:
    """A checkpoint's class count and input shape against a data set's
    (:class:`~parasnn.datasets.data.DatasetInfo`): a mismatch is an error, not a meaningless
    accuracy."""
    if spec.num_classes != info.num_classes:
        raise CheckpointError(f"{path} predicts {spec.num_classes} classes but the data set {info.name} "
                              f"({info.source}) has {info.num_classes}; use the data the model was trained on "
                              "(--data-dir)")
    if tuple(spec.input_shape) != tuple(info.input_shape):
        raise CheckpointError(f"{path} takes inputs of shape {tuple(spec.input_shape)} (C, H, W) but the data set "
                              f"{info.name} ({info.source}) has images of shape {tuple(info.input_shape)}; use "
                              "the data the model was trained on (--data-dir)")


def save_ann(path: str | Path, model: nn.Module, spec: ModelSpec, *, config: dict | None = None,
             metrics: dict | None = None) -> Path:
    """Write a trained ANN checkpoint (atomically)."""
    return save_torch(path, {"format": FORMAT, "version": VERSION, "kind": "ann", "model": spec.to_dict(),
                             "state_dict": model.state_dict(), "config": config or {}, "metrics": metrics or {}})


def load_ann(path: str | Path) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild a trained ANN: ``(model in eval mode, spec, checkpoint dict)``."""
    data = read_checkpoint(path, kind="ann")
    spec = _spec_of(data, Path(path))
    model = _build(spec, Path(path))
    _load_state(model, data["state_dict"], Path(path))
    return model.eval(), spec, data


def save_snn(path: str | Path, network: SpikingNetwork, spec: ModelSpec, *, method: Method | str = Method.FS_PC,
             from_relu: bool, config: dict | None = None, ann_fingerprint: str | None = None) -> Path:
    """Write a converted (and possibly calibrated) SNN checkpoint (atomically).

    ``from_relu``: the ANN had ReLUs that conversion quantized (their thresholds live in
    the neurons' state, so loading rebuilds the structure with placeholders first).
    ``ann_fingerprint``: :func:`ann_fingerprint` of the ANN checkpoint's state dict, checked
    by ``parasnn evaluate ANN --snn SNN``.
    """
    conversion = network.config.to_dict() if network.config is not None else ConversionConfig().to_dict()
    state = network.state_dict()
    check_finite_tensors(state, where=f"SNN to be written to {path}")
    data = {"format": FORMAT, "version": VERSION, "kind": "snn", "model": spec.to_dict(),
            "method": Method(method).value, "conversion": conversion, "from_relu": bool(from_relu),
            "state_dict": state, "config": config or {}}
    if ann_fingerprint is not None:
        data["ann_fingerprint"] = ann_fingerprint
    return save_torch(path, data)


def skeleton(spec: ModelSpec, *, method: Method | str, conversion: ConversionConfig, from_relu: bool
             ) -> SpikingNetwork:
    """The converted network of ``spec`` with placeholder thresholds and placeholder fitted
    functions (multi-basis neurons), ready for a state dict."""
    model = build_model(spec).eval()
    if from_relu:
        # Any input of the right shape records *some* threshold; the real ones come from the state dict.
        model = quantize_relus(model, [torch.zeros(1, *spec.input_shape)], levels=conversion.levels,
                               statistic=conversion.threshold)
    return convert(model, config=conversion, neuron=neuron_factory(method), placeholder_fits=True)


def load_snn(path: str | Path) -> tuple[SpikingNetwork, ModelSpec, dict]:
    """Rebuild a converted SNN: ``(network, spec, checkpoint dict)``."""
    data = read_checkpoint(path, kind="snn")
    spec = _spec_of(data, Path(path))
    try:
        conversion = ConversionConfig.from_dict(data["conversion"])
        network = skeleton(spec, method=data["method"], conversion=conversion, from_relu=data["from_relu"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {path} has an unreadable entry: {first_line(error)}") from error
    _load_state(network, data["state_dict"], Path(path))
    network.input_shape = tuple(spec.input_shape)
    return network.eval(), spec, data
