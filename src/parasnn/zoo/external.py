"""The user's own model: an architecture named by import path or torchvision name, weights
from a state-dict file, and a data set shaped for it.

``--model torchvision:resnet18`` builds ``torchvision.models.get_model("resnet18")`` (no
download: weights come only from ``--weights``); ``--model package.module:factory`` imports
``package.module`` and calls ``factory()`` (or instantiates it, if it is a class), passing
``num_classes=`` when one is given. Weights are a state dict saved with
``torch.save(model.state_dict(), "w.pt")`` (read with ``weights_only=True``) or a
``.safetensors`` file. A file holding a whole pickled model is refused: unpickling it would
run code named in the file.
"""
from __future__ import annotations

import importlib
import inspect
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["ModelError", "resolve_model", "load_weights", "external_model", "dataset_for", "strip_escapes"]


class ModelError(ValueError):
    """A model reference or weights file that cannot be used; the message says why and what to do."""


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape sequences (PyTorch colours some of its messages)."""
    return _ESCAPES.sub("", text)


def resolve_model(reference: str, *, num_classes: int | None = None) -> nn.Module:
    """Build the (untrained) architecture ``reference`` names: ``torchvision:NAME`` or
    ``package.module:factory``."""
    prefix, colon, name = reference.partition(":")
    if not colon or not prefix or not name:
        raise ModelError(f"--model {reference!r}: expected torchvision:NAME (e.g. torchvision:resnet18) or "
                         "package.module:factory")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if prefix == "torchvision":
        import torchvision
        try:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except ValueError as error:
            raise ModelError(f"--model {reference!r}: {error}; torchvision.models.list_models() lists the "
                             "names") from None
    else:
        try:
            module = importlib.import_module(prefix)
        except ImportError as error:
            raise ModelError(f"--model {reference!r}: cannot import {prefix!r} ({error}); is it installed or on "
                             "PYTHONPATH?") from None
        factory = getattr(module, name, None)
        if not callable(factory):
            raise ModelError(f"--model {reference!r}: {prefix} has no callable {name!r}")
        if kwargs and "num_classes" not in inspect.signature(factory).parameters:
            raise ModelError(f"--model {reference!r}: {name} takes no num_classes argument; leave out "
                             "--num-classes")
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {reference!r}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ModelError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelError(f"--weights {path}: not a readable safetensors file ({error})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = strip_escapes(str(error))
        found = re.search(r"GLOBAL ([\w.]+)", message)  # the pickle names a class or function to import
        if found is None:
            raise ModelError(f"--weights {path}: not a readable torch file, corrupt or truncated") from None
        what = f" (it names {found.group(1)})"
        raise ModelError(
            f"--weights {path} holds a pickled Python object{what}, not a state dict: loading it would run "
            "code stored in the file, so parasnn refuses it. Save the weights instead with "
            "torch.save(model.state_dict(), 'weights.pt') (or safetensors.torch.save_file) and pass the "
            "architecture with --model.") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelError(f"--weights {path}: not a readable torch file, corrupt or truncated "
                         f"({strip_escapes(str(error)).splitlines()[0]})") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise ModelError(f"--weights {path}: expected a state dict (names → tensors), got {type(data).__name__}")
    return data


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the state dict in ``path`` into ``model`` (strictly: every name and shape must fit)."""
    path = Path(path)
    state = _read_state(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = [f"{label}: {', '.join(items[:4])}{' …' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape (file vs model)", mismatched)) if items]
        hint = " Pass --num-classes to match the file's classifier." if mismatched else ""
        raise ModelError(f"--weights {path} does not fit {type(model).__name__}: " + "; ".join(parts) + "." + hint)
    model.load_state_dict(state)
    return model


def external_model(reference: str, weights: str | Path | None, *, num_classes: int | None = None) -> nn.Module:
    """:func:`resolve_model`, then :func:`load_weights` when ``weights`` is given; eval mode."""
    model = resolve_model(reference, num_classes=num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def dataset_for(name: str, input_shape: tuple[int, ...] | None, *, data_dir: str | None = None):
    """:func:`parasnn.datasets.data.load_dataset` with images resized to ``input_shape``'s
    height and width and grey images repeated to its channels (e.g. digits for an RGB model)."""
    from torch.utils.data import TensorDataset

    from ..datasets.data import load_dataset
    if input_shape is None:
        return load_dataset(name, data_dir=data_dir)
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ModelError(f"--input-shape {','.join(map(str, input_shape))}: expected C,H,W with H = W for an image "
                         "data set")
    channels, size = input_shape[0], input_shape[1]
    splits = load_dataset(name, data_dir=data_dir, image_size=size)
    have = splits.info.input_shape[0]
    if have == channels:
        return splits
    if have != 1:
        raise ModelError(f"--dataset {name} has {have} channels; the model takes {channels}")
    for split in ("train", "test"):
        dataset = getattr(splits, split)
        if not hasattr(dataset, "tensors"):  # streamed: repeated as each image is decoded
            dataset.channels = channels
            continue
        images, labels = dataset.tensors
        setattr(splits, split, TensorDataset(images.expand(-1, channels, -1, -1).contiguous(), labels))
    return splits
