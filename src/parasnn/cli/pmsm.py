"""``parasnn pmsm`` — quantize a full-precision signed-clip ANN for PMSM ([PMSM]).

::

    parasnn pmsm FP.pt --levels 4 --out QANN.pt [--snn SNN.pt] [--init entropy|percentile|range]
    parasnn evaluate QANN.pt --snn SNN.pt --time-steps 1,2,4
    parasnn pmsm FP.pt --compare entropy,percentile,range --levels 1,4 [--json TABLE.json]

``FP.pt`` is a network trained with signed activations (``ActivationKind.SIGNED``). The
command records pre-activations on the slice of the training set that ``parasnn train`` held
apart (``--calibration-size`` images; never the test set), initialises θ and the level split
of every layer (:mod:`parasnn.methods.pmsm`), fine-tunes on the rest of the training split
(``--epochs``), prints the per-layer choices and the test accuracy of both networks, and
writes the quantized ANN (an ordinary ANN checkpoint, ``parasnn convert QANN.pt --method
pmsm`` converts it) and, with ``--snn``, its PMSM spiking network. Each written file gets its
``<stem>.config.json``; ``--json`` writes the full report.

``--compare`` writes no network: for every L of ``--levels`` and every listed initialisation
it prints the test accuracy of the quantized ANN right after initialisation, of its SNN at
T = 1, and of the ANN after the same fine-tune (:func:`parasnn.methods.pmsm.compare_initialisations`).
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path

from .arguments import device, positive_int, positive_int_list

__all__ = ["add_command"]








def _initialisations(text: str) -> list[str]:
    from ..methods.pmsm import Initialisation
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = [i.value for i in Initialisation]
    if not names or any(name not in known for name in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(known)}, got {text!r}")
    return names


def add_command(commands) -> None:
    from ..methods.pmsm import Initialisation, PMSMConfig
    defaults = PMSMConfig()
    parser = commands.add_parser(
        "pmsm", help="quantize a signed-clip ANN for PMSM (signed multi-spike neurons, lossless at T = 1)",
        description="Replace the full-precision signed clips of a network trained with --activation signed by "
                    "signed quantizers (θ and level split from an information-entropy analysis of each layer's "
                    "pre-activations), fine-tune briefly, and save the quantized ANN (and its PMSM SNN).")
    parser.add_argument("checkpoint", type=Path, help="full-precision ANN checkpoint (activation kind 'signed')")
    parser.add_argument("--out", type=Path, help="quantized ANN checkpoint to write (required unless --compare)")
    parser.add_argument("--snn", type=Path, help="also convert and write the PMSM spiking network here")
    parser.add_argument("--levels", type=positive_int_list, default=[defaults.levels],
                        help="L, the quantization levels per layer: 2L non-zero signed levels, split between the polarities "
                             f"(default {defaults.levels}; a list such as 1,4 with --compare)")
    parser.add_argument("--compare", type=_initialisations, metavar="INITS",
                        help="compare initialisations (e.g. entropy,percentile,range) at every --levels L "
                             "instead of writing a network")
    parser.add_argument("--init", choices=[i.value for i in Initialisation], default=defaults.initialisation.value,
                        help="entropy (default), percentile of the pre-activations, or range (keep the learnt range)")
    parser.add_argument("--percentile", type=float, default=defaults.percentile,
                        help=f"--init percentile: the percentile of |x| taken as Lθ (default {defaults.percentile})")
    parser.add_argument("--epochs", type=int, default=defaults.fine_tune_epochs,
                        help="fine-tuning epochs over the training split "
                             f"(default {defaults.fine_tune_epochs}; 0: none)")
    parser.add_argument("--max-batches", type=positive_int, help="stop each fine-tuning epoch after this many batches")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate,
                        help=f"peak fine-tuning learning rate, cosine decay (default {defaults.learning_rate})")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--calibration-size", type=positive_int, default=1024,
                        help="images of the held-apart training slice used for the statistics (default 1024)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", type=Path, help="also write the full report as JSON")
    parser.add_argument("--markdown", type=Path, help="--compare: also write the table as Markdown")
    parser.add_argument("--data-dir", help="dataset directory (default: where the checkpoint's dataset was read from)")
    parser.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.set_defaults(handler=_command_pmsm)


def _splits_of(checkpoint: dict, data_dir: str | None, *, spec=None, path=None):
    """(training split, held-apart slice, test set, info) exactly as ``parasnn train`` split them;
    with ``spec``, the data must fit the model's class count and input shape."""
    from ..datasets.load import checkpoint_dataset
    from ..datasets.splits import recorded_split
    from ..io.checkpoint import check_fits_data
    config = checkpoint.get("config") or {}
    splits = checkpoint_dataset(config, data_dir=data_dir)
    if spec is not None:
        check_fits_data(spec, splits.info, path=path)
    train, held_apart = recorded_split(splits.train, config=config)
    return train, held_apart, splits.test, splits.info


def _command_pmsm(args) -> int:
    from ..io.checkpoint import ann_fingerprint, load_ann, save_ann, save_snn
    from ..io.files import check_outputs
    from .arguments import config_path
    from ..datasets.splits import sample_subset
    from ..conversion.stages import convert
    from ..datasets.data import make_loader
    from ..evaluation.accuracy import ann_accuracy
    from ..io.files import write_json
    from ..conversion.methods import Method, neuron_factory
    from ..zoo.models import ActivationKind, ActivationSpec
    from ..methods.pmsm import PMSMConfig, format_layers, quantize_network

    if args.compare is None and (args.out is None or len(args.levels) != 1):
        raise ValueError("give --out and a single --levels L (several L only with --compare)")
    if args.compare is None and args.markdown is not None:
        raise ValueError("--markdown writes the --compare table; add --compare (or drop --markdown)")
    if args.compare is not None and (args.out or args.snn):
        raise ValueError("--compare writes no network: drop --out/--snn (or run without --compare)")
    outputs = {"--out": args.out, "--snn": args.snn, "--json": args.json, "--markdown": args.markdown}
    outputs.update({f"{name}'s config": config_path(path) for name, path in (("--out", args.out), ("--snn", args.snn))
                    if path is not None})
    check_outputs(outputs, inputs={"checkpoint": args.checkpoint})
    model, spec, checkpoint = load_ann(args.checkpoint)
    if spec.activation.kind is not ActivationKind.SIGNED:
        raise ValueError(f"{args.checkpoint} has {spec.activation.kind.value} activations; PMSM quantizes networks "
                         "trained with signed activations (parasnn train --activation signed)")
    config = PMSMConfig(levels=args.levels[0], initialisation=args.init, percentile=args.percentile,
                        fine_tune_epochs=args.epochs, max_batches=args.max_batches, learning_rate=args.lr,
                        batch_size=args.batch_size, seed=args.seed)
    train, held_apart, test, info = _splits_of(checkpoint, args.data_dir, spec=spec, path=args.checkpoint)
    calibration = list(make_loader(sample_subset(held_apart, args.calibration_size, seed=args.seed), batch_size=256, shuffle=False))
    test_batches = list(make_loader(test, batch_size=256, shuffle=False))
    model = model.to(args.device)
    full_precision = ann_accuracy(model, test_batches, description="full-precision ANN")[0]
    if args.compare is not None:
        return _compare(args, model, calibration, train, test_batches, config, full_precision, spec, info)
    quantized, report = quantize_network(model, calibration, config=config,
                                         train_set=train if config.fine_tune_epochs else None)
    accuracy = ann_accuracy(quantized, test_batches, description="quantized ANN")[0]
    quantized = quantized.cpu()

    levels_spec = dataclasses.replace(spec, activation=ActivationSpec(kind=ActivationKind.SIGNED, levels=config.levels,
                                                                      threshold=spec.activation.threshold))
    resolved = {"command": "pmsm", "checkpoint": str(args.checkpoint), "pmsm": config.to_dict(),
                "calibration_size": args.calibration_size, "dataset": info.name, "device": str(args.device)}
    metrics = {"test_accuracy": accuracy, "full_precision_test_accuracy": full_precision, "pmsm": report.to_dict()}
    save_ann(args.out, quantized, levels_spec, config=resolved, metrics=metrics)
    write_json(config_path(args.out), resolved)
    if args.snn is not None:
        network = convert(quantized, neuron=neuron_factory(Method.PMSM))
        save_snn(args.snn, network, levels_spec, method=Method.PMSM, from_relu=False,
                 config=dict(resolved, ann=str(args.out)), ann_fingerprint=ann_fingerprint(quantized.state_dict()))
        write_json(config_path(args.snn), dict(resolved, ann=str(args.out)))
    if args.json:
        write_json(args.json, {"config": resolved, "model": levels_spec.to_dict(), **metrics})

    print(f"\nPMSM quantization of {spec.name} on {info.name}: L = {config.levels}, "
          f"init {config.initialisation.value}, {config.fine_tune_epochs} fine-tuning epoch(s), "
          f"{report.seconds:.0f} s\n")
    print(format_layers(report))
    print(f"\ntest accuracy: full-precision {100 * full_precision:.2f}%, quantized {100 * accuracy:.2f}% "
          f"({100 * (accuracy - full_precision):+.2f}) -> {args.out}" + (f", SNN -> {args.snn}" if args.snn else ""))
    return 0


def _command_line(args) -> str:
    """The comparison's command line, rebuilt from the parsed options that shape the table."""
    parts = ["pmsm", str(args.checkpoint), "--compare", ",".join(args.compare),
             "--levels", ",".join(str(level) for level in args.levels), "--epochs", str(args.epochs),
             "--lr", str(args.lr), "--calibration-size", str(args.calibration_size), "--seed", str(args.seed)]
    if args.max_batches:
        parts += ["--max-batches", str(args.max_batches)]
    return shlex.join(parts)


def _compare(args, model, calibration, train, test_batches, config, full_precision, spec, info) -> int:
    from ..io.files import write_json
    from ..methods.pmsm import compare_initialisations, format_comparison
    rows = compare_initialisations(model, calibration, train_set=train, test_batches=test_batches,
                                   levels=args.levels, initialisations=args.compare, config=config)
    length = f"{config.fine_tune_epochs} epoch" + (f", ≤ {config.max_batches} batches" if config.max_batches else "")
    title = (f"PMSM initialisations, {spec.name} on {info.name} (test accuracy, %; fine-tune: {length}, "
             f"lr {config.learning_rate})")
    table = format_comparison(rows, full_precision_accuracy=full_precision, fine_tune=length)
    print(f"\n{title}\n\n{table}")
    if args.markdown:
        from ..io.files import write_text
        write_text(args.markdown, f"### {title}\n\n{table}\n\nCommand: `parasnn {_command_line(args)}`.\n")
    if args.json:
        write_json(args.json, {"config": {"command": "pmsm --compare", "checkpoint": str(args.checkpoint),
                                          "levels": args.levels, "initialisations": args.compare,
                                          "pmsm": config.to_dict(), "calibration_size": args.calibration_size},
                               "full_precision_accuracy": full_precision, "rows": [r.to_dict() for r in rows]})
    return 0
