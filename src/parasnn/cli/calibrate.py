"""``parasnn calibrate`` and ``parasnn ablate`` — distribution-aware parallel calibration
([STDC]) from the command line.

::

    parasnn calibrate ANN.pt --stages da,bn,bias --time-steps 4 --out SNN.pt
    parasnn ablate ANN.pt --time-steps 2,4,8 --out DIR [--plots --layers 2,4,7]

The stages learn on the training set the network was trained on (``--training-size N``: a
seeded random sample); the slice that ``parasnn train`` held apart (``--holdout``, recorded in
the checkpoint; ``--calibration-size N``: a seeded random sample of it) judges — early
stopping, the guard, the reports. The test set is never used. ``calibrate`` writes the SNN with :func:`parasnn.io.checkpoint.save_snn`
(reload with ``load_snn``, evaluate with ``parasnn evaluate ANN.pt --snn SNN.pt --time-steps T``)
and ``<out stem>.config.json``; ``ablate`` writes ``ablation.md``, ``ablation.json`` (and
``ablation.config.json``), and with ``--plots`` one PNG per T and † variant.

Both run unchanged under ``torchrun --nproc_per_node N``: each process takes its shard of
the calibration and test data (a distributed sampler, ``--batch-size`` is the global batch),
statistics and gradients are reduced across processes, and rank 0 alone writes files.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .arguments import config_path, device, positive_int, positive_int_or_all, time_steps, time_steps_list
from .external import add_model_arguments, calibrate_external, require_model_or_checkpoint
from .habits import arguments_record

__all__ = ["add_command", "calibration_notes"]


def _stages(text: str):
    from ..calibration.config import CalibrationError, parse_stages
    try:
        return parse_stages(text)
    except CalibrationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_calibration_options(parser: argparse.ArgumentParser) -> None:
    from ..calibration.config import VALIDATIONS_PER_STAGE, CalibrationConfig, Objective, QuantizerGradient
    from ..conversion.stages import ThresholdScope
    defaults = CalibrationConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--learn-on", choices=("training", "held-apart"), default="training",
                      help="what the stages learn on: the training set (default, as [STDC]) or the held-apart "
                           "slice, split by --validation-fraction (parasnn <= 0.1; one epoch per stage, the "
                           "default for the whole training set, is few steps there: parasnn 0.1 ran 3)")
    data.add_argument("--training-size", type=positive_int,
                      help="images of the training set the stages learn on: a seeded random sample, for speed "
                           "(default: all of it)")
    data.add_argument("--statistics-size", type=positive_int_or_all, default=defaults.statistics_size,
                      help="training images (a seeded random sample) read by the passes that only measure: "
                           "ReLU thresholds, stage da's averages, stage bn's statistics; 'all' for every one "
                           f"(default {defaults.statistics_size})")
    data.add_argument("--calibration-size", type=positive_int,
                      help="images of the held-apart training slice (a seeded random sample) that judge: early "
                           "stopping, the guard, the reports (default: all of it)")
    data.add_argument("--data-dir", help="dataset directory (default: where the checkpoint's dataset was read from)")
    data.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                      help=f"global calibration batch size (default {defaults.batch_size})")
    data.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction,
                      help="with --learn-on held-apart: share of its batches held out for early stopping and the "
                           f"guard (default {defaults.validation_fraction})")
    data.add_argument("--seed", type=int, default=defaults.seed)
    data.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    relu = parser.add_argument_group("ReLU backbones")
    relu.add_argument("--percentile", type=float, default=defaults.percentile,
                      help=f"activation percentile recorded as threshold, 100 = max (default {defaults.percentile})")
    relu.add_argument("--threshold-scope", choices=[scope.value for scope in ThresholdScope],
                      default=defaults.threshold_scope.value,
                      help="one threshold per layer ([STDC], default) or per channel (beyond the paper; more "
                           "accurate at T <= 4, see docs/decisions.md)")
    relu.add_argument("--levels", type=int, default=defaults.levels,
                      help=f"L, the quantization levels per layer: of the QCFS that replaces each ReLU (default {defaults.levels})")
    da = parser.add_argument_group("stage da (DA-QCFS error calibration, †)")
    da.add_argument("--momentum", type=float, default=defaults.da.momentum,
                    help=f"α of the running error averages (default {defaults.da.momentum})")
    da.add_argument("--da-epochs", type=int, default=defaults.da.epochs)
    da.add_argument("--no-da-debias", action="store_true",
                    help="plain running averages started at 0 (as the reference code), no 1 − α^n correction")
    parser.add_argument("--no-revert", action="store_true",
                        help="keep the result of stages da and bn even when it raises the held-out loss "
                             "(default: such a stage is undone)")
    bn = parser.add_argument_group("stage bn (spatial recalibration)")
    bn.add_argument("--bn-lr", type=float, default=defaults.bn.learning_rate,
                    help=f"peak AdamW learning rate (default {defaults.bn.learning_rate})")
    bn.add_argument("--bn-final-lr", type=float, default=defaults.bn.final_learning_rate,
                    help=f"learning rate at the end of the cosine (default {defaults.bn.final_learning_rate})")
    bn.add_argument("--bn-epochs", type=int, default=defaults.bn.epochs)
    bn.add_argument("--bn-gradient", choices=[g.value for g in QuantizerGradient], default=defaults.bn.gradient.value,
                    help="gradient through the neurons: the IF triangle surrogate (default) or straight-through (ste)")
    bias = parser.add_argument_group("stage bias (temporal correction)")
    bias.add_argument("--bias-lr", type=float, default=defaults.bias.learning_rate,
                      help=f"peak AdamW learning rate (default {defaults.bias.learning_rate})")
    bias.add_argument("--bias-final-lr", type=float, default=defaults.bias.final_learning_rate)
    bias.add_argument("--bias-epochs", type=int, default=defaults.bias.epochs)
    bias.add_argument("--clip-norm", type=float, default=defaults.bias.clip_norm, help="gradient-norm clipping")
    bias.add_argument("--patience", type=int, default=defaults.bias.patience,
                      help=f"validations without improvement before stopping (default {defaults.bias.patience})")
    bias.add_argument("--validation-interval", type=positive_int, default=defaults.bias.validation_interval,
                      help="training steps between validations (default: the stage's steps / "
                           f"{VALIDATIONS_PER_STAGE}, about {VALIDATIONS_PER_STAGE} validations)")
    parser.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction,
                        help="share of the training steps of stages bn and bias that warm up linearly")
    objective = parser.add_argument_group("objective of stages bn and bias")
    objective.add_argument("--objective", choices=[o.value for o in Objective], default=defaults.objective.value,
                           help="labels: the labels' cross-entropy ([STDC]); distillation: the KL divergence to the "
                                f"ANN's logits (beyond the paper; docs/maths.md §4e) (default {defaults.objective.value})")
    objective.add_argument("--temperature", type=float, default=defaults.temperature,
                           help=f"τ of the distillation objective (default {defaults.temperature:g})")


def add_command(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="convert and calibrate a network for one T ([STDC]: da, bn, bias)",
        description="Convert an ANN checkpoint (QCFS or ReLU) into a parallel SNN calibrated for T time steps: "
                    "DA-QCFS error calibration (da, the paper's †), BatchNorm recalibration (bn, stage 1) and "
                    "per-channel temporal bias correction (bias, stage 2), any subset, always in that order. "
                    "The stages learn on the training set the network was trained on; the held-apart training slice "
                    "judges (early stopping, the guard); the test set is never used.")
    calibrate.add_argument("checkpoint", type=Path, nargs="?",
                           help="ANN checkpoint (model.pt from parasnn train); or use --model")
    calibrate.add_argument("--stages", type=_stages, default="da,bn,bias",
                           help="comma-separated subset of da,bn,bias (default all; 'none' = plain FS-PC)")
    calibrate.add_argument("--time-steps", "-T", type=time_steps, required=True, help="the target T")
    calibrate.add_argument("--out", type=Path, required=True,
                           help="SNN checkpoint to write (a directory with --model)")
    _add_calibration_options(calibrate)
    add_model_arguments(calibrate)
    calibrate.set_defaults(handler=_command_calibrate)

    ablate = commands.add_parser(
        "ablate", help="[STDC]'s ablation table (baseline / spatial / temporal / full, each with †)",
        description="For every T: the FS-PC baseline, + spatial recalibration (bn), + temporal correction (bias) "
                    "and both (full), each without and with DA-QCFS error calibration (†), evaluated on the test "
                    "set against the ANN. Writes ablation.md and ablation.json into --out; --plots adds PNG "
                    "histograms of ANN activations vs SNN time-averaged outputs ([STDC] Figures 1 and 4).")
    ablate.add_argument("checkpoint", type=Path, help="ANN checkpoint (model.pt from parasnn train)")
    ablate.add_argument("--time-steps", "-T", type=time_steps_list, default=[2, 4, 8], help="T values (default 2,4,8)")
    ablate.add_argument("--out", type=Path, required=True, help="directory for the table, JSON and plots")
    ablate.add_argument("--plots", action="store_true", help="also draw activation / firing-rate histograms")
    ablate.add_argument("--layers", help="layers to plot: neuron paths or 1-based positions, comma-separated "
                                         "(default: the 2nd, a middle and the last activation layer)")
    ablate.add_argument("--plot-images", type=positive_int, default=256, help="test images used for the plots (default 256)")
    ablate.add_argument("--limit", type=positive_int, help="evaluate on N test images only (a seeded random sample)")
    ablate.add_argument("--no-dagger", action="store_true", help="skip the † (da) rows")
    _add_calibration_options(ablate)
    ablate.set_defaults(handler=_command_ablate)


# -- shared pieces ----------------------------------------------------------------------------

def _config(args, *, stages, time_steps: int):
    from ..calibration.config import BatchNormConfig, BiasConfig, CalibrationConfig, DAConfig
    return CalibrationConfig(
        stages=stages, time_steps=time_steps, batch_size=args.batch_size, seed=args.seed,
        training_size=args.training_size if args.learn_on == "training" else None,
        statistics_size=args.statistics_size, validation_fraction=args.validation_fraction,
        percentile=args.percentile, threshold_scope=args.threshold_scope, levels=args.levels,
        warmup_fraction=args.warmup_fraction, revert_if_worse=not args.no_revert,
        objective=args.objective, temperature=args.temperature,
        da=DAConfig(momentum=args.momentum, epochs=args.da_epochs, debias=not args.no_da_debias),
        bn=BatchNormConfig(learning_rate=args.bn_lr, final_learning_rate=args.bn_final_lr, epochs=args.bn_epochs,
                           gradient=args.bn_gradient),
        bias=BiasConfig(learning_rate=args.bias_lr, final_learning_rate=args.bias_final_lr, epochs=args.bias_epochs,
                        clip_norm=args.clip_norm, patience=args.patience,
                        validation_interval=args.validation_interval))


def _shard_loader(dataset, *, batch_size: int):
    """Batches of ``dataset`` in order; under torchrun this process's shard, so that batch i
    of all processes together is batch i of one process with the global ``batch_size``.
    A streamed image folder's batches are a :class:`~parasnn.datasets.lazy.LazyBatches`:
    decoded when a stage uses them, none kept (memory independent of the folder's size)."""
    from ..runtime import distributed
    from ..datasets.splits import batch_sequence
    size = distributed.world_size()
    if size == 1:
        return batch_sequence(dataset, batch_size=batch_size)
    if batch_size % size:
        raise ValueError(f"--batch-size {batch_size} must be divisible by the {size} processes")
    return batch_sequence(dataset, batch_size=batch_size // size, num_replicas=size, rank=distributed.rank())


def _check_finite_data(dataset, *, where: str) -> None:
    """NaN or infinite calibration images would give NaN thresholds, terms and biases; name
    the first bad image instead (calibration/pipeline checks layer by layer later). A
    streamed image folder is finite by construction (8-bit pixels, std > 0): not read here."""
    if not hasattr(dataset, "tensors"):
        return
    images = dataset.tensors[0]
    finite = torch.isfinite(images.reshape(len(images), -1)).all(dim=1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise ValueError(f"{where}: {int((~finite).sum())} image(s) hold NaN or infinite values (the first is image "
                         f"{first} of the held-apart slice); repair the data set (--data-dir)")


def _load(args):
    """``(model, spec, checkpoint, splits, held-apart batches, training batches or None)``.

    The stages learn on the training set the network was trained on (``--learn-on training``,
    the default; a seeded random sample of ``--training-size`` images, or all of it); the
    held-apart slice (a seeded random sample of ``--calibration-size`` images) judges only.
    With ``--learn-on held-apart`` (parasnn ≤ 0.1) the held-apart batches are split instead."""
    from ..datasets.load import checkpoint_dataset
    from ..datasets.splits import held_apart_sample, training_sample
    from ..io.checkpoint import check_fits_data, load_ann
    from ..runtime.checks import require_positive_int
    model, spec, checkpoint = load_ann(args.checkpoint)
    if spec.activation.kind.value == "gelu":  # before any data are read
        raise ValueError(f"{args.checkpoint} is a {spec.name} with GELU activations: it has no ReLU or QCFS sites "
                         "whose IF neurons [STDC]'s stages calibrate; its GELU, softmax and layer norm convert "
                         f"training-free: use parasnn evaluate {args.checkpoint} -T 2,4,8,16 (or parasnn convert)")
    train_config = checkpoint.get("config") or {}
    splits = checkpoint_dataset(train_config, data_dir=args.data_dir)
    check_fits_data(spec, splits.info, path=args.checkpoint)
    for option in ("calibration_size", "training_size"):
        if getattr(args, option) is not None:
            require_positive_int(getattr(args, option), "--" + option.replace("_", "-"))
    held = held_apart_sample(splits.train, config=train_config, size=args.calibration_size, seed=args.seed)
    _check_finite_data(held, where=f"calibration data of {splits.info.name} ({splits.info.source})")
    training = None
    if args.learn_on == "training":
        training = _shard_loader(training_sample(splits.train, config=train_config, size=args.training_size,
                                                 seed=args.seed), batch_size=args.batch_size)
    return model, spec, checkpoint, splits, _shard_loader(held, batch_size=args.batch_size), training


def calibration_notes(report) -> list[str]:
    """Warnings for a calibration that changed nothing: every stage undone (its result raised
    the held-out loss), or a temporal bias that stayed at its initial zeros."""
    notes = []
    ran = list(report.stages)
    undone = [stage.stage for stage in ran if stage.details.get("reverted")]
    if undone:
        notes.append(f"stage(s) {', '.join(undone)} raised the held-out loss and were undone"
                     + (": no stage changed the network (it is the plain FS-PC conversion)"
                        if len(undone) == len(ran) else ""))
    for stage in ran:
        if stage.stage == "bias" and stage.details.get("mean_abs_bias") == 0.0:
            notes.append("stage bias learned nothing (every temporal bias is still 0: no validation improved on the "
                         "start); try a larger --bias-lr or more --bias-epochs")
    return notes


def _run(handler, args) -> int:
    from ..runtime import distributed
    with distributed.process_group():
        return handler(args)


# -- parasnn calibrate ----------------------------------------------------------------------

def _command_calibrate(args) -> int:
    return _run(_calibrate, args)


def _calibrate(args) -> int:
    from ..runtime import distributed
    from ..calibration.pipeline import calibrate_with_report
    from ..io.checkpoint import ann_fingerprint, save_snn
    from ..io.files import check_outputs, write_json
    from ..conversion.methods import Method
    config = _config(args, stages=args.stages, time_steps=args.time_steps)
    require_model_or_checkpoint(args, "calibrate")
    if args.model:
        return calibrate_external(args, config)
    check_outputs({"--out": args.out, "--out's config": config_path(args.out)}, inputs={"checkpoint": args.checkpoint})
    model, spec, checkpoint, splits, batches, training = _load(args)
    fingerprint = ann_fingerprint(checkpoint["state_dict"])
    model = model.to(args.device)
    start = time.perf_counter()
    network, report = calibrate_with_report(model, batches, config=config, training_data=training)
    seconds = time.perf_counter() - start
    if distributed.is_main_process():
        resolved = {"command": "calibrate", "checkpoint": str(args.checkpoint), "calibration": config.to_dict(),
                    "calibration_size": args.calibration_size, "learn_on": args.learn_on,
                    "dataset": splits.info.name,
                    "processes": distributed.world_size(), "seconds": seconds, "report": report.to_dict(),
                    **arguments_record(args)}
        save_snn(args.out, network.cpu(), spec, method=Method.FS_PC, from_relu=report.from_relu, config=resolved,
                 ann_fingerprint=fingerprint)
        write_json(config_path(args.out), resolved)
        stages = ",".join(s.value for s in config.stages) or "none"
        print(f"calibrated {spec.name} for T={config.time_steps} (stages {stages}) in {seconds:.1f} s -> {args.out}")
        print("  time (wall): " + ", ".join(f"{part} {spent['wall']:.1f} s" for part, spent in report.seconds.items()))
        for name, values in report.validation.items():
            print(f"  held-out after {name:6s}: accuracy {100 * values['accuracy']:.2f} %, "
                  f"loss {values['loss']:.4f} ({int(values['samples'])} images)")
        for note in calibration_notes(report):
            print(f"note: {note}")
        print(f"evaluate with: parasnn evaluate {args.checkpoint} --snn {args.out} --time-steps {config.time_steps}")
    return 0


# -- parasnn ablate ------------------------------------------------------------------------

def _command_ablate(args) -> int:
    return _run(_ablate, args)


def _ablate(args) -> int:
    from ..runtime import distributed
    from ..evaluation.ablation import PlotRequest, format_markdown, run_ablation
    from ..io.files import check_output_directory, check_outputs, write_json, write_text
    config = _config(args, stages=(), time_steps=args.time_steps[0])
    check_output_directory(args.out, what="--out")
    check_outputs({f"--out's {name}": args.out / name for name in ("ablation.md", "ablation.json",
                                                                    "ablation.config.json")},
                  inputs={"checkpoint": args.checkpoint})
    from ..datasets.splits import batch_sequence, sample_subset
    model, spec, checkpoint, splits, batches, training = _load(args)
    model = model.to(args.device)
    test = splits.test
    if args.limit is not None:
        test = sample_subset(test, args.limit, seed=0)  # across classes; the same images for every run
    # Shards without the sampler's padding, so that every test image counts once; a streamed
    # test set as lazy batches (decoded per pass, none kept), in memory as a list.
    test_batches = batch_sequence(distributed.shard(test), batch_size=256)
    plots = None
    if args.plots:
        layers = tuple(p.strip() for p in args.layers.split(",") if p.strip()) if args.layers else None
        plots = PlotRequest(directory=args.out, layers=layers, images=args.plot_images)
    start = time.perf_counter()
    report = run_ablation(model, batches, test_batches, time_steps=args.time_steps, config=config, training_data=training,
                          dagger=(False,) if args.no_dagger else (False, True), plots=plots, model_name=spec.name,
                          dataset=splits.info.name)
    if distributed.is_main_process():
        table = format_markdown(report)
        resolved = {"command": "ablate", "checkpoint": str(args.checkpoint), "time_steps": args.time_steps,
                    "calibration": config.to_dict(), "calibration_size": args.calibration_size,
                    "learn_on": args.learn_on, "limit": args.limit, "dataset": splits.info.name,
                    "processes": distributed.world_size(), "seconds": time.perf_counter() - start,
                    **arguments_record(args)}
        write_text(args.out / "ablation.md", table + "\n")
        write_json(args.out / "ablation.json", {"config": resolved, **report.to_dict()})
        write_json(args.out / "ablation.config.json", resolved)
        print(table)
        for path in report.plots:
            print(f"plot: {path}")
        print(f"-> {args.out / 'ablation.md'}, {args.out / 'ablation.json'}", file=sys.stderr)
    return 0
