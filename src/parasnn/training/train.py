"""Training a ReLU or QCFS ANN: seeded, resumable, checkpointed atomically with its config.

One run lives in one directory::

    .lock         held (flock) by the one process training into the directory; holds its pid
    config.json   the resolved configuration (written once the directory is known to fit it)
    last.pt       resumable state after every epoch (model, optimiser, schedule, history,
                  every random-number state, the epoch, step and data-order seeds)
    model.pt      the trained ANN (parasnn checkpoint, see :mod:`parasnn.io.checkpoint`)
    metrics.json  per-epoch loss / accuracy and the final test accuracy

The rules of a run directory (one writer, configuration checked before writing, faithful
resume, no extension of ``epochs``) are in :mod:`parasnn.training.runs`.

``holdout`` training images (a seeded slice, :func:`parasnn.datasets.data.calibration_split`) are
kept out of training; they are the validation set here and the default calibration data
of the conversion stages, so calibration never touches the test set.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cli.arguments import dataclass_from_dict
from ..io.checkpoint import CheckpointError, check_finite_tensors, load_torch_file, save_ann
from ..datasets.data import augment, calibration_split, load_dataset, make_loader
from ..evaluation.accuracy import ann_accuracy
from ..io.files import save_torch, write_json
from ..zoo.models import ActivationKind, ActivationSpec, ModelSpec, build_model
from ..conversion.network import device_of
from ..neurons.qcfs import QCFS
from ..runtime.progress import progress
from .initialisation import initialise_thresholds, load_relu_weights
from .runs import (RUN_FILES, RunError, check_run_config, own_random_states, random_states,
                   restore_random_states, run_lock)

__all__ = ["Optimizer", "TrainConfig", "train", "build_optimizer", "cosine_schedule", "RunError"]

class Optimizer(str, enum.Enum):
    SGD = "sgd"
    ADAMW = "adamw"


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``config.json``)."""

    model: str = "vgg-small"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    activation: ActivationKind = ActivationKind.QCFS
    levels: int | tuple[int, ...] = 4
    threshold: float = 8.0
    width: int | None = None
    epochs: int = 30
    batch_size: int = 128
    optimizer: Optimizer = Optimizer.SGD
    learning_rate: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    augment: bool = True
    holdout: int = 5000
    seed: int = 0
    max_batches: int | None = None  # per epoch; for quick runs and tests
    # A QCFS start (training/initialisation.py): weights of a trained network of the same
    # architecture (usually its ReLU twin), and/or every θ read off the data as this percentile
    # of the site's ReLU outputs (99.9 when init_from is given without one).
    init_from: str | None = None
    threshold_percentile: float | None = None

    def __post_init__(self):
        self.activation = ActivationKind(self.activation)
        self.optimizer = Optimizer(self.optimizer)
        if isinstance(self.levels, list):
            self.levels = tuple(self.levels)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig: learning_rate must be > 0, got {self.learning_rate}")
        if self.holdout < 0:
            raise ValueError(f"TrainConfig: holdout must be >= 0, got {self.holdout}")
        if self.init_from is not None:
            self.init_from = str(self.init_from)
            if self.threshold_percentile is None and self.activation is ActivationKind.QCFS:
                self.threshold_percentile = 99.9
        if self.threshold_percentile is not None:
            if self.activation is not ActivationKind.QCFS:
                raise ValueError("TrainConfig: threshold_percentile initialises QCFS thresholds; the activation is "
                                 f"{self.activation.value} (pass --activation qcfs)")
            if not 0 < self.threshold_percentile <= 100:
                raise ValueError(f"TrainConfig: threshold_percentile must be in (0, 100], got "
                                 f"{self.threshold_percentile}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["activation"], data["optimizer"] = self.activation.value, self.optimizer.value
        data["levels"] = list(self.levels) if isinstance(self.levels, tuple) else self.levels
        for key in ("init_from", "threshold_percentile"):  # absent when unused: older runs still resume
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, data)

    def model_spec(self, input_shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
        return ModelSpec(name=self.model, input_shape=tuple(input_shape), num_classes=num_classes,
                         activation=ActivationSpec(kind=self.activation, levels=self.levels,
                                                   threshold=self.threshold),
                         width=self.width)


def _augmentation(dataset: str) -> dict:
    """Random shifts for every dataset; mirror images only where the classes are mirror-symmetric
    (clothes, CIFAR objects) — not for digits, where a mirrored 2 is no longer a 2."""
    if dataset == "digits":
        return {"padding": 1, "flip": False}
    return {"padding": 2, "flip": True}


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices/kernels only: not on biases, BN affine terms or
    QCFS thresholds (decaying θ would shrink the activation range for no reason)."""
    decay, no_decay = [], []
    thresholds = {id(m.threshold) for m in model.modules() if isinstance(m, QCFS)}
    for parameter in model.parameters():
        (no_decay if parameter.dim() <= 1 or id(parameter) in thresholds else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer is Optimizer.SGD:
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def cosine_schedule(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_fraction = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_fraction)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


THRESHOLD_IMAGES = 2048  # training images whose activations set the initial thresholds


def _initialise(model: nn.Module, spec: ModelSpec, config: TrainConfig, train_set) -> None:
    """A fresh run's start: the weights of ``config.init_from`` and thresholds from the data
    (training/initialisation.py), both on the training set only."""
    if config.init_from is not None:
        load_relu_weights(model, spec, config.init_from)
    if config.threshold_percentile is None:
        return
    # Trained weights: the network as it will run (BN running statistics); fresh weights: BN's
    # batch statistics, which are what training will normalise with (running ones are 0 / 1).
    model.train(config.init_from is None)
    loader = make_loader(train_set, batch_size=config.batch_size, shuffle=True, seed=config.seed * 7919 + 1)
    batches = [batch for batch, _ in zip(loader, range(max(1, THRESHOLD_IMAGES // config.batch_size)))]
    thresholds = initialise_thresholds(model, batches, percentile=config.threshold_percentile)
    print("initial thresholds (" + f"{config.threshold_percentile:g}th percentile of ReLU outputs): "
          + ", ".join(f"{value:.3g}" for value in thresholds.values()), flush=True)


def _data_order(config: TrainConfig, epoch: int) -> dict[str, int]:
    """The seeds of one epoch's data order and augmentation: functions of (seed, epoch) only."""
    return {"epoch": epoch, "loader_seed": config.seed * 1009 + epoch, "augment_seed": config.seed * 100_003 + epoch}


_STATE_KEYS = ("config", "epoch", "model", "optimizer", "schedule", "history")


def _resume_state(path: Path, config: TrainConfig) -> dict | None:
    if not path.exists():
        return None
    state = load_torch_file(path, what="training state")
    if not isinstance(state, dict) or any(key not in state for key in _STATE_KEYS):
        raise CheckpointError(f"{path} is not a parasnn training state (a dict with {', '.join(_STATE_KEYS)}); "
                              "delete it or pass --no-resume to start over")
    if not isinstance(state["model"], dict) or not isinstance(state["epoch"], int):
        raise CheckpointError(f"{path}: damaged training state; delete it or pass --no-resume to start over")
    check_finite_tensors(state["model"], where=f"training state {path}")
    check_run_config(path.parent, config.to_dict(), recorded=state["config"], epochs_done=state["epoch"] + 1)
    return state


def train_epoch(model: nn.Module, loader, *, optimizer: torch.optim.Optimizer, schedule, steps: int,
                augmentation: Callable[[Tensor], Tensor] | None, description: str) -> dict[str, float]:
    """One epoch of cross-entropy training on the model's device: at most ``steps`` batches of
    ``(images, labels)`` from ``loader``, each augmented when ``augmentation`` is given, one
    optimiser and schedule step per batch. Returns the mean training loss and the seconds taken."""
    device = device_of(model)
    model.train()
    start, loss_sum, seen = time.time(), 0.0, 0
    for index, (images, labels) in enumerate(progress(loader, description=description, total=steps)):
        if index >= steps:
            break
        if augmentation is not None:
            images = augmentation(images)
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += float(loss.detach()) * labels.numel()
        seen += labels.numel()
    return {"loss": loss_sum / max(seen, 1), "seconds": time.time() - start}


def train(config: TrainConfig, *, out_dir: str | Path, resume: bool = True,
          device: torch.device | None = None, initial_state: dict | None = None) -> dict[str, Any]:
    """Train per ``config`` into ``out_dir``; returns the metrics written to ``metrics.json``.

    ``initial_state``: a state dict to start from instead of a fresh initialisation (a warm
    start, e.g. the fine-tuning phase of :mod:`parasnn.methods.adaptive_levels`); a resumed run
    continues from its own last epoch instead. The rules of a run directory (lock, config
    check before writing, bit-identical resume, no extension of ``epochs``) are in the module
    notes. The caller's global random-number states are left as they were."""
    out_dir = Path(out_dir)
    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    with run_lock(out_dir):
        state = _resume_state(out_dir / "last.pt", config) if resume else None
        recorded = out_dir / "config.json"
        if resume and recorded.exists():
            try:
                previous = json.loads(recorded.read_text()).get("train")
            except (OSError, ValueError, AttributeError) as error:
                raise RunError(f"{recorded} is unreadable ({error}); pass --no-resume to start over there, or "
                               "choose another --out") from None
            check_run_config(out_dir, config.to_dict(), recorded=previous, epochs_done=None)
        if not resume:
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
        with own_random_states(config.seed):
            return _train(config, out_dir, device=device, state=state, initial_state=initial_state)


def _train(config: TrainConfig, out_dir: Path, *, device: torch.device, state: dict | None,
           initial_state: dict | None) -> dict[str, Any]:
    splits = load_dataset(config.dataset, data_dir=config.data_dir)
    train_set = splits.train
    validation = None
    if config.holdout >= len(splits.train):
        raise ValueError(f"holdout={config.holdout} images cannot be held apart from the {len(splits.train)} training "
                         f"images of {config.dataset}; pass --holdout N (TrainConfig(holdout=N)) below that, e.g. "
                         f"{len(splits.train) // 10}")
    if config.holdout:
        train_set, validation = calibration_split(splits.train, size=config.holdout, seed=config.seed)
    spec = config.model_spec(splits.info.input_shape, splits.info.num_classes)
    model = build_model(spec).to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    elif state is None:
        _initialise(model, spec, config, train_set)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    if config.max_batches:
        steps_per_epoch = min(steps_per_epoch, config.max_batches)
    schedule = cosine_schedule(optimizer, total_steps=config.epochs * steps_per_epoch,
                               warmup_steps=min(steps_per_epoch, 200))
    history: list[dict] = []
    first_epoch = 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{out_dir / 'last.pt'} does not fit this run ({str(error).splitlines()[0]}); "
                                  "pass --no-resume to start over") from None
        history, first_epoch = state["history"], state["epoch"] + 1
        expected = _data_order(config, first_epoch)
        if state.get("data_order", expected) != expected:
            raise CheckpointError(f"{out_dir / 'last.pt'} was written with another data order "
                                  f"({state['data_order']} vs {expected}); pass --no-resume to start over")
        if "random_states" in state:
            restore_random_states(state["random_states"])
        else:
            print(f"note: {out_dir / 'last.pt'} holds no random-number states (an older parasnn wrote it); the "
                  "resumed run will not be bit-identical to an uninterrupted one", file=sys.stderr)
    write_json(out_dir / "config.json", {"train": config.to_dict(), "model": spec.to_dict(),
                                         "dataset": dataclasses.asdict(splits.info)})
    test_loader = make_loader(splits.test, batch_size=256, shuffle=False)
    validation_loader = make_loader(validation, batch_size=256, shuffle=False) if validation is not None else None
    for epoch in range(first_epoch, config.epochs):
        order = _data_order(config, epoch)
        generator = torch.Generator().manual_seed(order["augment_seed"])
        loader = make_loader(train_set, batch_size=config.batch_size, shuffle=True, seed=order["loader_seed"],
                             drop_last=True)
        options = _augmentation(splits.info.name)
        augmentation = (lambda images: augment(images, generator=generator, **options)) if config.augment else None
        record = {"epoch": epoch + 1, **train_epoch(model, loader, optimizer=optimizer, schedule=schedule,
                                                    steps=steps_per_epoch, augmentation=augmentation,
                                                    description=f"epoch {epoch + 1}/{config.epochs}"),
                  "learning_rate": schedule.get_last_lr()[0]}
        if validation_loader is not None:
            record["validation_accuracy"] = ann_accuracy(model, validation_loader, description="validation")[0]
        history.append(record)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in record.items() if k != "epoch"), flush=True)
        if not math.isfinite(record["loss"]):
            raise RunError(f"training diverged in epoch {epoch + 1} (loss {record['loss']}); lower --lr and start "
                           f"over with --no-resume (the last good state is {out_dir / 'last.pt'})")
        # Everything the next epoch depends on, as it is now: a run resumed from here draws the
        # same random numbers and batches as one that never stopped.
        save_torch(out_dir / "last.pt", {"config": config.to_dict(), "epoch": epoch, "step": schedule.last_epoch,
                                         "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "schedule": schedule.state_dict(), "history": history,
                                         "random_states": random_states(),
                                         "data_order": _data_order(config, epoch + 1)})
    test_accuracy = ann_accuracy(model, test_loader, description="test")[0]
    metrics = {"test_accuracy": test_accuracy, "history": history, "train_images": len(train_set),
               "holdout_images": len(validation) if validation is not None else 0}
    save_ann(out_dir / "model.pt", model.cpu(), spec, config=config.to_dict(), metrics=metrics)
    write_json(out_dir / "metrics.json", metrics)
    return metrics
