"""Method × T accuracy on the Fashion-MNIST backbones, with the ANN's accuracy, each
method's loss against it, firing rates and an energy estimate (docs/maths.md §8).

    python benchmarks/accuracy_table.py --out runs/bench/accuracy           # every backbone present
    python benchmarks/accuracy_table.py --train                              # train missing backbones first
    python benchmarks/accuracy_table.py --methods sj-default,sj-corrected --limit 2000

Backbones are trained with ``parasnn train`` (resumable) into ``runs/<name>/model.pt``, or
loaded when present. Test accuracy is measured on the test split; conversion and every
calibration use the held-apart slice of the training set ``parasnn train`` recorded, never
the test set.

Rows are a registry: a **row** is a function ``(context, T) -> RowResult`` registered with
:func:`row`. Adding a method is a few lines, e.g. for the main paper's calibration::

    @row("full", description="main paper: DA + BN recalibration + temporal bias (parallel)")
    def full(context, time_steps):
        from parasnn.calibration.pipeline import CalibrationConfig, calibrate
        network = calibrate(context.model, context.calibration_batches,
                            config=CalibrationConfig(time_steps=time_steps))
        return evaluate_network(context, network, time_steps=time_steps, form=Form.PARALLEL)

and adding its name to :data:`DEFAULT_METHODS`. Writes ``accuracy.json`` and
``accuracy.md``; ``benchmarks/update_readme.py`` turns the JSON into the README's results.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling baselines module

from parasnn.cli.arguments import device as device_argument  # noqa: E402
from parasnn.io.checkpoint import load_ann  # noqa: E402
from parasnn.io.files import write_json, write_text  # noqa: E402
from parasnn.conversion.stages import ConversionConfig, ThresholdScope, ThresholdStatistic, convert  # noqa: E402
from parasnn.evaluation.energy import ActivityReport  # noqa: E402
from parasnn.evaluation.accuracy import Form, ann_accuracy, snn_accuracy  # noqa: E402
from parasnn.zoo.models import ActivationKind, ModelSpec  # noqa: E402
from parasnn.conversion.network import SpikingNetwork  # noqa: E402

__all__ = ["Backbone", "BACKBONES", "Context", "RowResult", "Row", "ROWS", "DEFAULT_METHODS", "row",
           "evaluate_network", "build_table", "markdown_table", "write_report", "merge_tables",
           "main"]


# --------------------------------------------------------------------------- backbones


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A trained ANN the table converts: where its checkpoint lives and the ``parasnn``
    commands that make it (run in order when it is missing; each is resumable or cheap).

    ``reference``: for a network quantized from another one (PMSM), the full-precision
    checkpoint whose accuracy the table also reports."""

    name: str
    checkpoint: Path
    recipe: tuple[tuple[str, ...], ...]  # argument lists of `parasnn ...`
    description: str
    reference: Path | None = None


_TRAIN = ("train", "--model", "vgg-small", "--dataset", "fashion-mnist")
BACKBONES: dict[str, Backbone] = {
    "vgg-small-qcfs-l4": Backbone(
        "vgg-small-qcfs-l4", Path("runs/fmnist-vgg-small-qcfs-l4/model.pt"),
        # [QCFS]'s θ = 8 start, as the shipped network was trained (the default now reads θ off the data)
        ((*_TRAIN, "--activation", "qcfs", "--levels", "4", "--threshold", "8", "--epochs", "30", "--out",
          "runs/fmnist-vgg-small-qcfs-l4"),),
        "small VGG, QCFS L = 4, Fashion-MNIST"),
    "vgg-small-relu": Backbone(
        "vgg-small-relu", Path("runs/fmnist-vgg-small-relu/model.pt"),
        ((*_TRAIN, "--activation", "relu", "--epochs", "15", "--out", "runs/fmnist-vgg-small-relu"),),
        "small VGG, ReLU (training-free conversion), Fashion-MNIST"),
    # Residual networks through the same rows (issue 14): QCFS and ReLU at equal epochs, the
    # QCFS thresholds read off the data (parasnn train's default).
    "resnet20-qcfs-l4": Backbone(
        "resnet20-qcfs-l4", Path("runs/fmnist-resnet20-qcfs-l4/model.pt"),
        (("train", "--model", "resnet20", "--dataset", "fashion-mnist", "--activation", "qcfs", "--levels", "4",
          "--epochs", "15", "--out", "runs/fmnist-resnet20-qcfs-l4"),),
        "CIFAR-style ResNet-20, QCFS L = 4, Fashion-MNIST"),
    "resnet20-relu": Backbone(
        "resnet20-relu", Path("runs/fmnist-resnet20-relu/model.pt"),
        (("train", "--model", "resnet20", "--dataset", "fashion-mnist", "--activation", "relu", "--epochs", "15",
          "--out", "runs/fmnist-resnet20-relu"),),
        "CIFAR-style ResNet-20, ReLU (training-free conversion), Fashion-MNIST"),
    "vgg-small-pmsm-l4": Backbone(
        "vgg-small-pmsm-l4", Path("runs/pmsm/qann-l4.pt"),
        ((*_TRAIN, "--activation", "signed", "--threshold", "1", "--epochs", "12",
          "--out", "runs/fmnist-vgg-small-signed"),
         ("pmsm", "runs/fmnist-vgg-small-signed/model.pt", "--levels", "4", "--out", "runs/pmsm/qann-l4.pt")),
        "small VGG, signed quantizers L = 4 (PMSM, entropy initialisation), quantized from a full-precision "
        "signed ANN, Fashion-MNIST", reference=Path("runs/fmnist-vgg-small-signed/model.pt")),
}


def ensure_backbone(backbone: Backbone, *, train: bool, root: Path) -> Path | None:
    """The checkpoint path, running the backbone's recipe first when it is missing and
    ``train`` (``parasnn train`` resumes an interrupted run); ``None`` when missing."""
    path = root / backbone.checkpoint
    if path.is_file():
        return path
    if not train or not backbone.recipe:
        return None
    for arguments in backbone.recipe:
        command = [sys.executable, "-m", "parasnn.cli", *arguments]
        print("running " + " ".join(shlex.quote(c) for c in command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, cwd=root)
    return path if path.is_file() else None


# --------------------------------------------------------------------------- rows


@dataclasses.dataclass
class Context:
    """What every row function gets for one backbone.

    ``test_batches`` and ``calibration_batches`` are lists of ``(images (B, C, H, W),
    labels (B,))`` on ``device``; calibration batches come from the training set only.
    ``cache`` lets rows share work (e.g. one converted network for all T)."""

    backbone: str
    model: nn.Module
    spec: ModelSpec
    test_batches: list
    calibration_batches: list
    device: torch.device
    cache: dict = dataclasses.field(default_factory=dict)
    reference: nn.Module | None = None  # the full-precision ANN a quantized backbone came from
    training_batches: list | None = None  # the training set the calibration stages learn on ([STDC])

    @property
    def from_relu(self) -> bool:
        return self.spec.activation.kind is ActivationKind.RELU


@dataclasses.dataclass
class RowResult:
    """One method at one T. ``activity`` (firing rates, SOPs, energy) where the method's
    network reports spike counts; ``note`` says anything a reader must know."""

    accuracy: float
    samples: int
    seconds: float
    activity: ActivityReport | None = None
    note: str = ""


class NotApplicable(Exception):
    """Raised by a row function for a T at which its method does not run (the cell shows –
    and the reason is listed under the table)."""


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    function: Callable[[Context, int], RowResult]
    description: str
    applies_to: tuple[ActivationKind, ...]


ROWS: dict[str, Row] = {}
# The rows the table shows unless --methods says otherwise (SpikingJelly rows are a check).
DEFAULT_METHODS: list[str] = ["qcfs-serial", "fs-pc-parallel", "fs-pc-channel", "fs-pc-dagger", "full",
                               "full-dagger", "full-dagger-channel", "full-distilled", "pascal",
                               "pmsm-parallel", "pmsm-serial"]


def row(name: str, *, description: str,
        applies_to: tuple[ActivationKind, ...] = (ActivationKind.QCFS, ActivationKind.RELU)):
    """Register ``function(context, time_steps) -> RowResult`` as the table row ``name``."""
    def register(function: Callable[[Context, int], RowResult]):
        ROWS[name] = Row(name, function, description, tuple(applies_to))
        return function
    return register


def evaluate_network(context: Context, network: SpikingNetwork, *, time_steps: int, form: Form,
                     note: str = "") -> RowResult:
    """Accuracy, spike activity and energy of ``network`` on the test batches."""
    result = snn_accuracy(network.to(context.device), context.test_batches, time_steps=time_steps, form=form)
    return RowResult(result.accuracy, result.samples, result.seconds, result.activity, note)


def converted(context: Context, *, scope: ThresholdScope = ThresholdScope.LAYER) -> SpikingNetwork:
    """The backbone converted with parasnn's defaults (parallel IF neurons; ReLU backbones
    get θ = the 99.9th percentile on the calibration slice, per layer or per channel
    (``scope``), QCFS proxy L = 8)."""
    key = f"converted-{scope.value}"
    if key not in context.cache:
        data = context.calibration_batches if context.from_relu else None
        config = ConversionConfig(threshold=ThresholdStatistic(scope=scope))
        context.cache[key] = convert(context.model, calibration_data=data, config=config).to(context.device)
    return context.cache[key]


@row("qcfs-serial", description="IF neurons run serially (T steps, soft reset, v₀ = θ/2): the classic conversion")
def qcfs_serial(context: Context, time_steps: int) -> RowResult:
    return evaluate_network(context, converted(context), time_steps=time_steps, form=Form.SERIAL)


@row("fs-pc-parallel", description="FS-PC parallel IF neurons, one pass ([FS-PC]/[STDC], no calibration)")
def fs_pc_parallel(context: Context, time_steps: int) -> RowResult:
    return evaluate_network(context, converted(context), time_steps=time_steps, form=Form.PARALLEL)


def _calibrated_row(stages: str, **options):
    """A row of the main paper's calibration ([STDC]): the backbone calibrated for each T
    with :func:`parasnn.calibration.pipeline.calibrate` and the given stages (default
    hyperparameters of :class:`~parasnn.calibration.pipeline.CalibrationConfig`, changed by
    ``options``), learning on the training set and judged on the held-apart slice, then run
    in parallel."""
    def function(context: Context, time_steps: int) -> RowResult:
        from parasnn.calibration.pipeline import CalibrationConfig, calibrate
        config = CalibrationConfig(stages=stages, time_steps=time_steps, **options)
        start = time.perf_counter()
        network = calibrate(context.model, context.calibration_batches, config=config,
                            training_data=context.training_batches)
        seconds = time.perf_counter() - start
        return evaluate_network(context, network, time_steps=time_steps, form=Form.PARALLEL,
                                note=f"calibration {seconds:.0f} s")
    return function


@row("fs-pc-channel", description="FS-PC parallel IF neurons with one threshold per channel (beyond the papers; "
     "docs/decisions.md, Per-channel thresholds), no calibration", applies_to=(ActivationKind.RELU,))
def fs_pc_channel(context: Context, time_steps: int) -> RowResult:
    return evaluate_network(context, converted(context, scope=ThresholdScope.CHANNEL), time_steps=time_steps,
                            form=Form.PARALLEL)


row("fs-pc-dagger", description="FS-PC with DA-QCFS error calibration ([STDC]'s †, stage da)")(
    _calibrated_row("da"))
row("full", description="main paper: BN recalibration + temporal bias correction (stages bn,bias), parallel")(
    _calibrated_row("bn,bias"))
row("full-dagger", description="main paper with †: DA-QCFS + BN recalibration + temporal bias (stages da,bn,bias)")(
    _calibrated_row("da,bn,bias"))
row("full-dagger-channel", description="main paper with † on per-channel thresholds (stages "
                        "da,bn,bias; beyond the paper)", applies_to=(ActivationKind.RELU,))(
    _calibrated_row("da,bn,bias", threshold_scope="channel"))
row("full-labels", description="stages bn,bias on the paper's objective, the labels' cross-entropy")(
    _calibrated_row("bn,bias", objective="labels"))
row("full-distilled", description="stages bn,bias learning from the ANN's logits (distillation, τ = 4; beyond the "
    "paper, docs/maths.md §4e)")(_calibrated_row("bn,bias", objective="distillation", temperature=4.0))


@row("pascal", description="PASCAL ([PASCAL]): inhibitory-spike neurons run serially, layer-pipelined; exact "
     "at T = L, reported in the T = L column with its effective latency T_eff", applies_to=(ActivationKind.QCFS,))
def pascal(context: Context, time_steps: int) -> RowResult:
    from parasnn.conversion.methods import neuron_factory
    from parasnn.methods.pascal import evaluate_pascal
    from parasnn.neurons.qcfs import QCFS
    levels = sorted({int(module.levels) for module in context.model.modules() if isinstance(module, QCFS)})
    if time_steps != max(levels, default=0):  # one cell: its timing is the layers' L, not T
        raise NotApplicable(f"PASCAL runs each layer for its own L ({levels}); shown in the T = max L column")
    if "pascal" not in context.cache:
        network = convert(context.model, neuron=neuron_factory("pascal")).to(context.device)
        context.cache["pascal"] = evaluate_pascal(context.model, network, context.test_batches)
    result = context.cache["pascal"]
    note = (f"T_eff = {result.effective_latency}; {result.equal_outputs}/{result.samples} logits bit-equal "
            "to the ANN's")
    return RowResult(result.snn_accuracy, result.samples, result.snn_seconds, result.activity, note)


def _pmsm_network(context: Context) -> SpikingNetwork:
    if "pmsm" not in context.cache:
        from parasnn.conversion.methods import neuron_factory
        context.cache["pmsm"] = convert(context.model, neuron=neuron_factory("pmsm")).to(context.device)
    return context.cache["pmsm"]


@row("pmsm-parallel", description="PMSM ([PMSM]): signed multi-spike neurons, parallel; exact at T = 1 "
     "(a multi-spike counts as its number of spikes)", applies_to=(ActivationKind.SIGNED,))
def pmsm_parallel(context: Context, time_steps: int) -> RowResult:
    return evaluate_network(context, _pmsm_network(context), time_steps=time_steps, form=Form.PARALLEL)


@row("pmsm-serial", description="PMSM run serially, step by step (residual refinement after T = 1)",
     applies_to=(ActivationKind.SIGNED,))
def pmsm_serial(context: Context, time_steps: int) -> RowResult:
    return evaluate_network(context, _pmsm_network(context), time_steps=time_steps, form=Form.SERIAL)


def _spikingjelly_row(*, qcfs_thresholds: bool, half_start: bool, mode: str = "max"):
    def function(context: Context, time_steps: int) -> RowResult:
        from baselines import run_spikingjelly, spikingjelly_network
        key = ("spikingjelly", qcfs_thresholds, half_start, mode)
        if key not in context.cache:
            calibration = [(x, y) for x, y in context.calibration_batches]
            context.cache[key] = spikingjelly_network(context.model, calibration, mode=mode,
                                                      qcfs_thresholds=qcfs_thresholds,
                                                      half_threshold_start=half_start)
        network = context.cache[key]
        correct = total = 0
        start = time.perf_counter()
        with torch.no_grad():
            for x, y in context.test_batches:
                logits = run_spikingjelly(network, x, time_steps=time_steps)
                correct += int((logits.argmax(dim=1) == y).sum())
                total += y.numel()
        return RowResult(correct / max(total, 1), total, time.perf_counter() - start, None,
                         note="spike counts not recorded")
    return function


row("sj-default", description="SpikingJelly ann2snn.Converter as shipped (ReLU twin, max-norm scales, v₀ = 0)")(
    _spikingjelly_row(qcfs_thresholds=False, half_start=False))
row("sj-half-start", description="SpikingJelly, max-norm scales, v₀ = θ/2")(
    _spikingjelly_row(qcfs_thresholds=False, half_start=True))
row("sj-qcfs-theta", description="SpikingJelly with the QCFS thresholds, v₀ = 0",
    applies_to=(ActivationKind.QCFS,))(_spikingjelly_row(qcfs_thresholds=True, half_start=False))
row("sj-corrected", description="SpikingJelly with the QCFS thresholds and v₀ = θ/2 (= qcfs-serial up to float "
    "rounding)",
    applies_to=(ActivationKind.QCFS,))(_spikingjelly_row(qcfs_thresholds=True, half_start=True))


# --------------------------------------------------------------------------- the table


def _activity_fields(activity: ActivityReport | None, time_steps: int) -> dict:
    if activity is None:
        return {"firing_rate": None, "snn_energy_uj": None, "ann_energy_uj": None, "energy_ratio": None,
                "sops": None}
    neurons = sum(layer.neurons for layer in activity.layers)
    spikes = sum(layer.spikes for layer in activity.layers)
    return {"firing_rate": spikes / max(neurons, 1) / time_steps,  # spikes per neuron per step
            "snn_energy_uj": activity.snn_energy_pj * 1e-6, "ann_energy_uj": activity.ann_energy_pj * 1e-6,
            "energy_ratio": activity.snn_energy_pj / max(activity.ann_energy_pj, 1e-12),
            "sops": activity.total_sops}


def build_table(context: Context, *, methods: Sequence[str], time_steps: Sequence[int],
                log: Callable[[str], None] = lambda line: None) -> dict:
    """Run the ANN and every applicable method at every T on one backbone.

    Returns ``{"backbone", "model", "ann": {"accuracy", "samples"}, "rows": [...]}`` with one
    row entry per method × T: accuracy, loss (ANN − SNN, in accuracy units), firing rate
    (spikes per neuron per step), energy per image in µJ and its ratio to the ANN's, or
    ``skipped`` with the reason.
    """
    ann, _, samples = ann_accuracy(context.model.to(context.device), context.test_batches,
                                   description=f"{context.backbone} ANN")
    log(f"{context.backbone}: ANN {100 * ann:.2f}% on {samples} images")
    reference = None
    if context.reference is not None:
        reference = ann_accuracy(context.reference.to(context.device), context.test_batches,
                                 description=f"{context.backbone} full-precision ANN")[0]
        log(f"{context.backbone}: full-precision ANN {100 * reference:.2f}%")
    rows = []
    for name in methods:
        entry = ROWS[name]
        for t in time_steps:
            base = {"method": name, "description": entry.description, "time_steps": t}
            if context.spec.activation.kind not in entry.applies_to:
                rows.append(dict(base, skipped=f"applies to {[k.value for k in entry.applies_to]} backbones only"))
                continue
            try:
                result = entry.function(context, t)
            except (ImportError, NotApplicable) as error:  # an optional baseline not installed, or not this T
                rows.append(dict(base, skipped=str(error)))
                log(f"  {name} T={t}: skipped ({error})")
                continue
            rows.append(dict(base, accuracy=result.accuracy, loss=ann - result.accuracy, samples=result.samples,
                             seconds=result.seconds, note=result.note,
                             **_activity_fields(result.activity, t)))
            log(f"  {name} T={t}: {100 * result.accuracy:.2f}% ({result.seconds:.1f} s)")
    return {"backbone": context.backbone, "model": context.spec.to_dict(),
            "ann": {"accuracy": ann, "samples": samples}, "rows": rows,
            **({"reference": {"accuracy": reference}} if reference is not None else {})}


def markdown_table(table: dict, *, description: str = "") -> str:
    """Two Markdown tables for one backbone: accuracy (% and loss against the ANN in
    percentage points) per method × T; firing rate and energy per image per method × T."""
    rows = table["rows"]
    steps = sorted({r["time_steps"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    find = {(r["method"], r["time_steps"]): r for r in rows}
    ann = table["ann"]["accuracy"]
    header = "| method | " + " | ".join(f"T={t}" for t in steps) + " |"
    rule = "|---|" + "---:|" * len(steps)
    title = f"### {table['backbone']}" + (f" — {description}" if description else "")
    lines = [title, "", f"ANN accuracy {100 * ann:.2f}% on {table['ann']['samples']} test images. "
             "Cells: SNN accuracy % (loss against the ANN, percentage points).", "", header, rule]
    if table.get("reference"):
        lines[2:2] = [f"The quantized ANN comes from a full-precision ANN of "
                      f"{100 * table['reference']['accuracy']:.2f}%.", ""]
    for method in methods:
        cells = []
        for t in steps:
            r = find.get((method, t))
            if r is None or "skipped" in r:
                cells.append("–")
            else:
                cells.append(f"{100 * r['accuracy']:.2f} ({100 * r['loss']:+.2f})")
        if any(c != "–" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Firing rate (spikes per neuron per step) / energy per image in µJ (× the ANN's).", "",
              header, rule]
    for method in methods:
        cells = []
        for t in steps:
            r = find.get((method, t))
            if r is None or "skipped" in r or r.get("firing_rate") is None:
                cells.append("–")
            else:
                cells.append(f"{r['firing_rate']:.3f} / {r['snn_energy_uj']:.3g} ({r['energy_ratio']:.2f}×)")
        if any(c != "–" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    described = [f"- `{m}`: {find[(m, steps[0])]['description']}" for m in methods if (m, steps[0]) in find
                 and any("skipped" not in find.get((m, t), {"skipped": 1}) for t in steps)]
    by_note: dict[tuple[str, str], list[int]] = {}  # one line per method and note, listing its T
    for r in rows:
        if r.get("note") and "skipped" not in r and not r["note"].startswith("calibration "):
            by_note.setdefault((r["method"], r["note"]), []).append(r["time_steps"])
    notes = [f"- `{method}` at T={','.join(map(str, ts))}: {note}" for (method, note), ts in by_note.items()]
    skipped = sorted({(r["method"], r["skipped"]) for r in rows if "skipped" in r
                      and not r["skipped"].startswith("applies to")})
    lines += ["", *described, *notes]
    if skipped:
        lines += [f"- `{m}` not run: {reason}" for m, reason in skipped]
    return "\n".join(lines) + "\n"


def _load_context(backbone: Backbone, path: Path, *, device: torch.device, limit: int | None,
                  calibration_size: int | None, batch_size: int, root: Path, training_size: int | None = None
                  ) -> Context:
    """Test batches (``batch_size``) and calibration batches of the held-apart training slice
    (the calibration stages' own batch size, so the rows match ``parasnn ablate``)."""
    from parasnn.calibration.pipeline import CalibrationConfig
    from parasnn.datasets import checkpoint_dataset, held_apart_sample, make_loader, sample_subset, training_sample
    model, spec, checkpoint = load_ann(path)
    config = checkpoint.get("config", {})
    splits = checkpoint_dataset(config)
    held_apart = held_apart_sample(splits.train, config=config, size=calibration_size)

    def batches(dataset, size):
        return [(x.to(device), y.to(device)) for x, y in make_loader(dataset, batch_size=size, shuffle=False)]

    reference = None
    if backbone.reference is not None and (root / backbone.reference).is_file():
        reference = load_ann(root / backbone.reference)[0].to(device).eval()
    calibration_batch = CalibrationConfig().batch_size
    return Context(backbone.name, model.to(device).eval(), spec, batches(sample_subset(splits.test, limit), batch_size),
                   batches(held_apart, calibration_batch), device, reference=reference,
                   training_batches=batches(training_sample(splits.train, config=config, size=training_size),
                                            calibration_batch))


def write_report(out: Path, payload: dict, *, title: str = "") -> str:
    """Write ``payload`` (``{"machine", "tables", "missing", …}``) as ``out/accuracy.json`` and
    its Markdown (title, one table per backbone, then the missing backbones) as
    ``out/accuracy.md``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "accuracy.json", payload)
    text = (f"{title}\n\n" if title else "") + "\n".join(
        markdown_table(t, description=t.get("description", "")) for t in payload["tables"])
    text += "".join(f"\n{m['backbone']}: {m['reason']} ({m['checkpoint']})\n" for m in payload["missing"])
    write_text(out / "accuracy.md", text)
    return text


def merge_tables(tables: Sequence[dict]) -> list[dict]:
    """One table per backbone from tables of separate runs (e.g. one process per T on a
    machine with few cores). Rows are keyed by (method, T); a later table's row replaces an
    earlier one's. Tables of one backbone must agree on the ANN's accuracy and sample count,
    or they measured different networks or test sets and cannot share a table.
    Rows come out in registry order (:data:`ROWS`), then by T."""
    merged: dict[str, dict] = {}
    rows: dict[str, dict[tuple[str, int], dict]] = {}
    for table in tables:
        name = table["backbone"]
        if name not in merged:
            merged[name], rows[name] = dict(table), {}
        elif merged[name]["ann"] != table["ann"]:
            raise ValueError(f"backbone {name!r}: the tables disagree on the ANN ({merged[name]['ann']} against "
                             f"{table['ann']}); merge only runs of the same checkpoint on the same test images")
        rows[name].update({(r["method"], r["time_steps"]): r for r in table["rows"]})
    order = list(ROWS)
    for name, table in merged.items():
        table["rows"] = sorted(rows[name].values(), key=lambda r: (
            order.index(r["method"]) if r["method"] in order else len(order), r["time_steps"]))
    return list(merged.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES),
                        help=f"registered backbones, comma-separated (default {','.join(BACKBONES)}; '' for none)")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="also evaluate this ANN checkpoint (repeatable; named after its file)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"rows, comma-separated; known: {', '.join(ROWS)} (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--time-steps", default="1,2,4,8", help="default 1,2,4,8")
    parser.add_argument("--limit", type=int, help="N test images only (a seeded random sample across classes)")
    parser.add_argument("--training-size", type=int,
                        help="training images the calibration stages learn on: a seeded random sample (default all)")
    parser.add_argument("--calibration-size", type=int,
                        help="images of the held-apart training slice used for conversion and calibration "
                             "(default: all of it, as parasnn ablate)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train", action="store_true", help="train missing backbones with parasnn train")
    parser.add_argument("--root", type=Path, default=Path("."), help="where runs/ lives (default .)")
    parser.add_argument("--device", type=device_argument, default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/accuracy"))
    parser.add_argument("--title", help="a line of Markdown put before the tables in accuracy.md")
    args = parser.parse_args(argv)
    from parasnn.bench import measure as bench
    device = args.device
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ROWS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(ROWS)}")
    time_steps = [int(t) for t in args.time_steps.split(",") if t.strip()]
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    tables, missing = [], []
    unknown = [b.strip() for b in args.backbones.split(",") if b.strip() and b.strip() not in BACKBONES]
    if unknown:
        raise SystemExit(f"unknown backbone(s) {unknown}; registered: {list(BACKBONES)} (or pass --checkpoint)")
    selected = [BACKBONES[b.strip()] for b in args.backbones.split(",") if b.strip()]
    # Named after the file, or after its run directory for the usual runs/<name>/model.pt.
    selected += [Backbone(path.parent.name if path.stem == "model" else path.stem, path.resolve(), (),
                          f"checkpoint {path}") for path in args.checkpoint]
    for backbone in selected:
        name = backbone.name
        path = ensure_backbone(backbone, train=args.train, root=args.root)
        if path is None:
            missing.append({"backbone": name, "checkpoint": str(args.root / backbone.checkpoint),
                            "reason": "checkpoint missing (run with --train to train it)"})
            log(f"{name}: {missing[-1]['reason']}")
            continue
        context = _load_context(backbone, path, device=device, limit=args.limit,
                                calibration_size=args.calibration_size, batch_size=args.batch_size, root=args.root,
                                training_size=args.training_size)
        table = build_table(context, methods=methods, time_steps=time_steps, log=log)
        table.update(checkpoint=str(path), description=backbone.description)
        tables.append(table)
    command = "python " + shlex.join([f"benchmarks/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
    payload = {"machine": bench.machine_info(device, torch.get_num_threads()), "command": command,
               "tables": tables, "missing": missing}
    print(write_report(args.out, payload, title=args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
