"""``parasnn`` — the command line.

::

    parasnn train      train a ReLU or QCFS network (Fashion-MNIST, CIFAR, ImageFolder, digits)
    parasnn convert    turn a trained network into a spiking network and save it
    parasnn evaluate   ANN vs SNN accuracy at several T, parallel and serial, with firing
                       rates and energy; table on screen, JSON on request
    parasnn demo       the embedded Fashion-MNIST network, no download needed

This module holds the parser of the commands that share the data and conversion options
(train, convert, evaluate; the latter two run in :mod:`.checkpoint_commands`), train itself
and the error handling of every command; the other commands live in their own modules
(``COMMAND_MODULES``).

Every command that writes a file also writes the resolved configuration next to it
(``<name>.config.json``). Run ``parasnn <command> --help`` for the options.

Errors: every output is checked before the work starts (:func:`parasnn.io.files.check_outputs`:
never onto an input, never onto a directory or device, the location must accept files), and
a user error — a bad option, file, checkpoint or data set — is one line on stderr naming
what is wrong and the fix, with exit status 2 (``parasnn --debug <command>`` shows the
traceback). An unexpected internal error is also one line, with exit status 1.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from .arguments import config_path, device, forms_list, positive_int, positive_int_list, time_steps_list
from .checkpoint_commands import command_convert, command_evaluate
from .external import add_model_arguments
from .habits import expand_config, show_defaults

__all__ = ["main", "build_parser", "summary_parser", "COMMAND_MODULES", "COMMAND_SUMMARIES", "user_errors",
           "config_path"]

# Modules that contribute subcommands: each defines ``add_command(commands)``, which adds its
# parser to the ``argparse`` sub-parsers and sets ``handler=`` (a function of the parsed
# arguments returning an exit status) with ``set_defaults``.
COMMAND_MODULES: tuple[str, ...] = ("parasnn.cli.calibrate", "parasnn.cli.bench", "parasnn.cli.pmsm",
                                     "parasnn.cli.export", "parasnn.cli.text", "parasnn.cli.demo")

# parasnn train's initial QCFS thresholds (docs/decisions.md, Training): read off the data
# as this percentile of each site's ReLU outputs unless a θ is given; the fixed θ is [QCFS]'s
# (TrainConfig's default, and what the activations other than QCFS start from).
DEFAULT_THRESHOLD_PERCENTILE = 99.0
FIXED_THRESHOLD = 8.0

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_CHECKPOINT = ASSETS / "fashion_mnist_vgg_small_qcfs.pt"
DEMO_TEST_SLICE = ASSETS / "fashion_mnist_test_slice.npz"


def _levels(text: str):
    if text.strip().lower() == "auto":  # PASCAL's adaptive layerwise activation (parasnn.methods.adaptive_levels)
        return "auto"
    values = positive_int_list(text)
    return values[0] if len(values) == 1 else tuple(values)


_config_path = config_path  # the name other command modules imported before


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="dataset directory (default: where the checkpoint's dataset was read "
                                           "from, e.g. /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:1 or auto (default)")


DESCRIPTION = ("Convert trained PyTorch networks into spiking neural networks that keep the ANN's accuracy at 1-8 "
               "time steps and run in one parallel pass.")
EPILOG = ("Start with `parasnn demo`. Typical use: parasnn train --out runs/vgg; "
          "parasnn evaluate runs/vgg/model.pt --time-steps 1,2,4,8")

# One line per command for `parasnn --help`, which then imports neither torch nor the command
# modules (tests/test_cli_habits.py checks these lines against the commands' own).
COMMAND_SUMMARIES: dict[str, str] = {
    "train": "train a ReLU or QCFS network",
    "convert": "convert a trained network into a spiking network",
    "evaluate": "ANN vs SNN accuracy, firing rates and energy",
    "demo": "convert and evaluate the embedded Fashion-MNIST network",
    "calibrate": "convert and calibrate a network for one T ([STDC]: da, bn, bias)",
    "ablate": "[STDC]'s ablation table (baseline / spatial / temporal / full, each with †)",
    "bench": "speed and memory of the SNN against the ANN (parallel, spike trains, serial)",
    "pmsm": "quantize a signed-clip ANN for PMSM (signed multi-spike neurons, lossless at T = 1)",
    "export": "write a converted network as NIR or as safetensors + JSON",
    "text": "MiniLM sentence encoder as an SNN: cosine to the ANN, probe accuracy, Lee Pearson, energy",
}


def summary_parser() -> argparse.ArgumentParser:
    """The top-level parser with one line per command and no command options (fast)."""
    parser = argparse.ArgumentParser(prog="parasnn", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"parasnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, summary in COMMAND_SUMMARIES.items():
        commands.add_parser(name, help=summary)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from ..conversion.stages import BatchNormMode, ThresholdScope
    from ..conversion.methods import Method
    from ..zoo.models import MODEL_NAMES, ActivationKind
    from ..training.train import Optimizer

    parser = argparse.ArgumentParser(prog="parasnn", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"parasnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (default: off)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    train = commands.add_parser("train", help="train a ReLU or QCFS network",
                                description="Train an ANN with ReLU or QCFS activations. Seeded and resumable: "
                                            "re-running with the same --out continues from the last epoch.")
    train.add_argument("--model", choices=MODEL_NAMES, default="vgg-small",
                       help="architecture (default vgg-small); vit-tiny is a GELU vision transformer, trained in "
                            "the README with --optimizer adamw --lr 2e-3 --weight-decay 0.05 --epochs 25")
    train.add_argument("--dataset", default="fashion-mnist",
                       help="fashion-mnist (default), cifar10, cifar100, digits or image-folder")
    train.add_argument("--data-dir", help="dataset directory (default: the dataset's standard location)")
    train.add_argument("--activation", choices=[kind.value for kind in ActivationKind], default=None,
                       help="qcfs (default for the CNNs), relu, signed (the full-precision network PMSM quantizes; "
                            "use --threshold 1), or gelu (vit-tiny's only activation, its default)")
    train.add_argument("--levels", type=_levels, default=4,
                       help="L, the quantization levels per layer: of each QCFS activation; one integer, one per site (4,4,8,...), or auto "
                            "(PASCAL's adaptive layerwise activation: probe, choose L per layer, fine-tune)")
    train.add_argument("--threshold", type=float,
                       help="initial threshold θ, one value for every site (default for QCFS: read off the data, "
                            "see --threshold-percentile; [QCFS]'s fixed 8 with --threshold 8; 8 for the other "
                            "activations)")
    train.add_argument("--threshold-percentile", type=float,
                       help="QCFS: set every initial threshold to this percentile of the site's ReLU outputs on "
                            f"training images (default {DEFAULT_THRESHOLD_PERCENTILE:g} unless --threshold is given; "
                            "99.9 with --init-from)")
    train.add_argument("--init-from", type=Path,
                       help="QCFS: start from the weights of this ANN checkpoint (model.pt of a ReLU run of the same "
                            "--model and --width on the same data), thresholds from its activation ranges")
    train.add_argument("--width", type=positive_int, help="base channel width (default: the architecture's)")
    train.add_argument("--epochs", type=positive_int, default=30,
                       help="epochs (default 30); part of the run's configuration: an existing run is not extended")
    train.add_argument("--batch-size", type=positive_int, default=128)
    train.add_argument("--optimizer", choices=[o.value for o in Optimizer], default="sgd")
    train.add_argument("--lr", type=float, default=0.05, help="peak learning rate (cosine decay after warm-up)")
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--no-augment", action="store_true", help="no random shifts / flips")
    train.add_argument("--holdout", type=int, default=None,
                       help="training images kept out of training for validation and calibration (default: 5000, "
                            "or a tenth of a training set smaller than 50000, e.g. digits)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-batches", type=positive_int, help="stop each epoch after this many batches (quick runs)")
    train.add_argument("--out", type=Path, default=Path("runs/train"), help="run directory (default runs/train)")
    train.add_argument("--no-resume", action="store_true",
                       help="start over even if --out holds a run (its files are removed)")
    train.add_argument("--device", type=device, default="auto")
    from .levels import add_train_arguments
    add_train_arguments(train)

    convert = commands.add_parser("convert", help="convert a trained network into a spiking network",
                                  description="Convert an ANN checkpoint into an SNN checkpoint. QCFS networks "
                                              "convert directly; ReLU networks get thresholds from a held-apart "
                                              "slice of the training set.")
    convert.add_argument("checkpoint", type=Path, nargs="?",
                         help="ANN checkpoint (model.pt from parasnn train); or use --model")
    convert.add_argument("--out", type=Path, required=True,
                         help="SNN checkpoint to write (a directory with --model)")
    convert.add_argument("--method", choices=[m.value for m in Method],
                         help="neurons to convert to (default: pmsm for signed networks, fs-pc otherwise)")
    convert.add_argument("--batchnorm", choices=[m.value for m in BatchNormMode], default="keep",
                         help="keep BN as frozen layers (bit-exact, default) or fold it into conv/linear")
    convert.add_argument("--percentile", type=float, default=99.9,
                         help="ReLU networks: activation percentile used as threshold (100 = max)")
    convert.add_argument("--threshold-scope", choices=[scope.value for scope in ThresholdScope],
                         default=ThresholdScope.LAYER.value,
                         help="ReLU networks: one threshold per layer (FS-PC, default) or per channel (beyond the "
                              "papers; far more accurate at T <= 4, see docs/decisions.md)")
    convert.add_argument("--levels", type=positive_int, default=8, help="L, the quantization levels per layer: of the QCFS that replaces each ReLU (default 8)")
    convert.add_argument("--t-levels", action="store_true",
                         help="QCFS networks at T > L: give every neuron T levels (a finer grid than the ANN's; "
                              "often better for --forms serial) instead of keeping the ANN's L levels (default: keep "
                              "them, so the parallel SNN is the ANN at every T >= L)")
    convert.add_argument("--calibration-size", type=positive_int, default=1024,
                         help="ReLU and GELU networks: images from the held-apart training slice used to record "
                              "thresholds and the inputs the multi-basis neurons are fitted on")
    convert.add_argument("--function-time-steps", type=time_steps_list, default=[2, 4, 8, 16],
                         help="GELU networks (vit-tiny): the T values the multi-basis neurons of GELU, softmax and "
                              "layer norm are fitted for; the SNN runs at these T only (default 2,4,8,16)")
    convert.add_argument("--bases", type=positive_int, default=4,
                         help="GELU networks: bases N of every multi-basis neuron (default 4)")
    _add_data_options(convert)
    add_model_arguments(convert)

    evaluate = commands.add_parser("evaluate", help="ANN vs SNN accuracy, firing rates and energy",
                                   description="Evaluate an ANN and its spiking network at several T, in parallel "
                                               "and serial form. Without --snn the ANN is converted on the fly.")
    evaluate.add_argument("checkpoint", type=Path, nargs="?", help="ANN checkpoint (model.pt); or use --model")
    evaluate.add_argument("--snn", type=Path, help="SNN checkpoint from parasnn convert, or a directory from "
                                                   "parasnn convert --model (default: convert now)")
    evaluate.add_argument("--time-steps", "-T", type=time_steps_list, default=[1, 2, 4, 8],
                          help="T values (default 1,2,4,8)")
    evaluate.add_argument("--forms", type=forms_list, default="parallel,serial",
                          help="parallel, serial or both (default parallel,serial)")
    evaluate.add_argument("--limit", type=positive_int, help="evaluate on the first N test images only (N >= 1)")
    evaluate.add_argument("--batch-size", type=positive_int, default=256)
    evaluate.add_argument("--no-activity", action="store_true", help="skip firing rates and energy")
    evaluate.add_argument("--t-levels", action="store_true",
                         help="QCFS networks at T > L: give every neuron T levels (a finer grid than the ANN's; "
                              "often better for --forms serial) instead of keeping the ANN's L levels (default: keep "
                              "them, so the parallel SNN is the ANN at every T >= L)")
    evaluate.add_argument("--json", type=Path, help="also write the full report as JSON")
    evaluate.add_argument("--method", choices=[m.value for m in Method],
                          help="conversion method when converting now (default: pmsm for signed networks, fs-pc "
                               "otherwise; a --snn checkpoint brings "
                               "its own); pascal runs PASCAL's layer-pipelined serial SNN and reports its effective "
                               "latency T_eff (its timing comes from the layers' L: --time-steps and --forms do "
                               "not apply)")
    evaluate.add_argument("--pascal-accumulation", choices=["inputs", "currents"], default="inputs",
                          help="pascal: accumulate each synapse's input spikes (bit-exact, default) or sum "
                               "per-step currents (floating-point rounding)")
    evaluate.add_argument("--calibration-size", type=positive_int, default=1024,
                          help="ReLU and GELU networks: held-apart training images used to record thresholds and "
                               "to fit the multi-basis neurons when converting on the fly (fitted for the "
                               "--time-steps given)")
    evaluate.add_argument("--bases", type=positive_int, default=4,
                          help="GELU networks converted on the fly: bases N of every multi-basis neuron (default 4)")
    _add_data_options(evaluate)
    add_model_arguments(evaluate)

    train.set_defaults(handler=_command_train)
    convert.set_defaults(handler=command_convert)
    evaluate.set_defaults(handler=command_evaluate)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(commands)
    for command in commands.choices.values():  # `parasnn evaluate ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error (default: off)")
    show_defaults(parser)
    return parser


# -- commands ---------------------------------------------------------------------------

def default_holdout(dataset: str, *, data_dir: str | None = None) -> int:
    """5000 held-apart images, or a tenth of a training set smaller than 50000 (digits has
    1438): small data sets train with the defaults. The number is resolved here so that the
    run's recorded configuration holds it."""
    from ..datasets.data import load_dataset
    size = len(load_dataset(dataset, data_dir=data_dir).train)
    return 5000 if size >= 50_000 else max(1, size // 10)


def _recorded_with_fixed_threshold(out: Path) -> bool:
    """Whether ``out`` holds a recorded QCFS run that started from a fixed θ (its ``config.json``
    names no ``threshold_percentile``); an unreadable record counts as no (the run says why)."""
    import json
    try:
        recorded = json.loads((Path(out) / "config.json").read_text()).get("train") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return recorded.get("activation") == "qcfs" and "threshold_percentile" not in recorded


def _command_train(args) -> int:
    from ..methods.adaptive_levels import PROBE_LEVELS
    from .levels import command_train
    from ..training.train import TrainConfig, train
    from ..zoo.spec import architecture
    entry = architecture(args.model)
    args.activation = args.activation or entry.default_activation.value
    entry.check_activation(args.model, args.activation)  # before the data are read
    if args.threshold is None:
        # A QCFS network starts with θ read off the data unless a θ is given (docs/decisions.md,
        # Training); the number goes into the run's recorded configuration. A run recorded
        # before that default, resumed by the same command, keeps the fixed θ it started with.
        if (args.activation == "qcfs" and args.threshold_percentile is None and args.init_from is None
                and (args.no_resume or not _recorded_with_fixed_threshold(args.out))):
            args.threshold_percentile = DEFAULT_THRESHOLD_PERCENTILE
        args.threshold = FIXED_THRESHOLD
    auto = args.levels == "auto"
    if auto and args.activation == "gelu":
        raise ValueError(f"--levels auto chooses QCFS levels; {args.model} has GELU activations (no levels): drop "
                         "--levels")
    if args.holdout is None:
        args.holdout = default_holdout(args.dataset, data_dir=args.data_dir)
    config = TrainConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, activation=args.activation,
                         levels=PROBE_LEVELS if auto else args.levels, threshold=args.threshold, width=args.width,
                         epochs=args.epochs,
                         batch_size=args.batch_size, optimizer=args.optimizer, learning_rate=args.lr,
                         weight_decay=args.weight_decay, augment=not args.no_augment, holdout=args.holdout,
                         seed=args.seed, max_batches=args.max_batches,
                         init_from=None if args.init_from is None else str(args.init_from),
                         threshold_percentile=args.threshold_percentile)
    from ..io.files import check_output_directory
    check_output_directory(args.out, what="--out")
    if auto:
        return command_train(config, args)
    metrics = train(config, out_dir=args.out, resume=not args.no_resume, device=args.device)
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f}%  -> {args.out / 'model.pt'}")
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the user asked for something that cannot be done" (a bad
    option, file, checkpoint, data set or run directory): one line and exit status 2."""
    from ..io.checkpoint import CheckpointError
    from ..datasets.data import DataError
    from ..conversion.graph import ConversionError
    from ..training.runs import RunError
    return CheckpointError, DataError, ConversionError, RunError, ValueError, OSError


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _terminate(signum, frame):
    # SIGTERM (torchrun stopping the other workers, a job scheduler) as an exception: the
    # atomic writes' clean-up runs instead of leaving temporary files behind.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version"):  # no command: answer without importing torch
        summary_parser().parse_args(argv)
    parser = build_parser()
    args = parser.parse_args(expand_config(argv, parser))
    from ..runtime.progress import enable
    enable()  # bars on the command line; library calls stay quiet unless asked
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        previous = None
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"parasnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as error:
        if args.debug:
            raise
        print(f"parasnn {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug, not a user error: still no traceback unless asked
        if args.debug:
            raise
        print(f"parasnn {args.command}: internal error ({type(error).__name__}: {_one_line(error)[:300]}); "
              "rerun with parasnn --debug ... for the traceback and report it", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
