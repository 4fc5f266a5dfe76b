"""``parasnn bench CHECKPOINT`` — speed and memory of your own network's SNN against its ANN.

Times, in one process, interleaved (see :mod:`parasnn.bench.measure`): the checkpoint's ANN, its
ReLU twin (when the ANN is quantized), the parallel SNN, the parallel SNN with every spike
train materialised, and the serial simulation, at every batch size × T asked for. Writes
``speed.json``, ``speed.md`` and PNG plots into ``--out`` and prints the Markdown. Inputs
are random images of the network's input shape (speed does not depend on pixel values).
The SpikingJelly and FS-PC folded baselines live in the repository's ``benchmarks/``.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch

from .arguments import device, positive_int, positive_int_list, time_steps_list

__all__ = ["add_command"]




def add_command(commands) -> None:
    from ..bench.measure import CLOCKS
    bench = commands.add_parser(
        "bench", help="speed and memory of the SNN against the ANN (parallel, spike trains, serial)",
        description="Times, in one process and interleaved, the checkpoint's ANN, its ReLU twin (for quantized "
                    "ANNs), the parallel SNN, the parallel SNN with every spike train materialised, and the serial "
                    "simulation, at every batch size and T; measures each one's peak memory. Writes speed.json, "
                    "speed.md and PNG plots into --out. Inputs are random images of the network's input shape. "
                    "Use --threads 1 --clock cpu on a machine shared with other jobs.")
    bench.add_argument("checkpoint", type=Path, help="ANN checkpoint (model.pt from parasnn train)")
    bench.add_argument("--snn", type=Path, help="SNN checkpoint from parasnn convert/calibrate (default: convert "
                                                "now; ReLU networks record thresholds on the held-apart slice)")
    bench.add_argument("--time-steps", "-T", type=time_steps_list, default=[1, 2, 4, 8, 16, 32, 64],
                       help="T values (default 1,2,4,8,16,32,64)")
    bench.add_argument("--batch-sizes", type=positive_int_list, default=[1, 128], help="default 1,128")
    bench.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds (default 5)")
    bench.add_argument("--min-block-seconds", type=float, default=0.05,
                       help="a timing block repeats a run until it lasts this long (default 0.05)")
    bench.add_argument("--cap-seconds", type=float, default=5.0,
                       help="skip larger T of the serial/spike-train engines once one run would take longer "
                            "(default 5; skipped cases are listed with the reason)")
    bench.add_argument("--memory-cap-gib", type=float, default=4.0, help="... or need more memory (default 4)")
    bench.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                       help=f"torch threads (default {torch.get_num_threads()})")
    bench.add_argument("--no-serial", action="store_true", help="leave the serial simulation out")
    bench.add_argument("--no-trains", action="store_true", help="leave the materialised spike trains out")
    bench.add_argument("--keep-freed-memory", action="store_true",
                       help="let glibc malloc keep freed memory (CPU: avoids page faults on every pass, "
                            "see parasnn.bench.measure.keep_freed_cpu_memory)")
    bench.add_argument("--no-plots", action="store_true", help="no PNG plots (they need matplotlib)")
    bench.add_argument("--out", type=Path, default=Path("runs/bench-checkpoint"),
                       help="directory for speed.json, speed.md and the plots (default runs/bench-checkpoint)")
    bench.add_argument("--data-dir", help="dataset directory, for ReLU networks' thresholds (default: the "
                                          "checkpoint's)")
    bench.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    bench.add_argument("--clock", choices=CLOCKS, default="wall",
                       help="wall (default) or cpu: CPU time of the process, robust when other jobs share the "
                            "cores (use with --threads 1)")
    bench.set_defaults(handler=_command_bench)


def _network(args, model, spec, checkpoint):
    """The SNN to time and a note on how it was made."""
    from ..io.checkpoint import load_snn
    from ..conversion.stages import ConversionConfig, convert
    from ..zoo.models import ActivationKind
    from .checkpoint_commands import check_fitted_time_steps, needs_calibration_data
    if args.snn is not None:
        network, _, _ = load_snn(args.snn)
        check_fitted_time_steps(network, args.time_steps, where=f"--snn {args.snn}")
        return network, f"SNN from {args.snn}"
    if not needs_calibration_data(spec):
        from ..conversion.methods import default_method, neuron_factory
        method = default_method(spec.activation.kind)
        return convert(model, neuron=neuron_factory(method)), f"converted now (method {method.value})"
    from ..datasets import DataError, checkpoint_dataset, held_apart_batches
    from ..io.checkpoint import check_fits_data
    try:
        train_config = checkpoint.get("config") or {}
        splits = checkpoint_dataset(train_config, data_dir=args.data_dir)
        check_fits_data(spec, splits.info, path=args.checkpoint)
        batches = held_apart_batches(splits.train, config=train_config, size=256)
        source = "256 images of the held-apart training slice"
    except DataError as error:
        # Thresholds and fits change which neurons fire, not how much work a forward pass does.
        batches = [torch.randn(64, *spec.input_shape, generator=torch.Generator().manual_seed(0))]
        source = f"random inputs (data unavailable: {str(error).splitlines()[0]})"
    if spec.activation.kind is ActivationKind.GELU:  # multi-basis neurons fitted for every T timed
        config = ConversionConfig(function_time_steps=tuple(args.time_steps))
        return convert(model, calibration_data=batches, config=config), f"multi-basis neurons fitted on {source}"
    return convert(model, calibration_data=batches), f"ReLU thresholds recorded on {source}"


def _command_bench(args) -> int:
    from ..bench import measure as bench
    from ..io.checkpoint import load_ann
    from ..io.files import check_output_directory, check_outputs
    from ..zoo.models import ActivationKind
    device = args.device
    check_output_directory(args.out, what="--out")
    check_outputs({f"--out's {name}": args.out / name for name in ("speed.json", "speed.md")},
                  inputs={"checkpoint": args.checkpoint, "--snn": args.snn})
    model, spec, checkpoint = load_ann(args.checkpoint)
    network, how = _network(args, model, spec, checkpoint)
    model, network = model.eval().to(device), network.eval().to(device)
    # The ReLU twin of a quantized ANN; a GELU network has no quantizer to compare with.
    quantized = spec.activation.kind not in (ActivationKind.RELU, ActivationKind.GELU)
    relu = bench.relu_twin(model).to(device) if quantized else None
    kept = bench.keep_freed_cpu_memory() if args.keep_freed_memory else False
    results = []
    for batch_size in args.batch_sizes:
        print(f"{spec.name}, batch {batch_size}, {device}, {args.threads} threads", file=sys.stderr, flush=True)
        inputs = torch.randn(batch_size, *spec.input_shape, generator=torch.Generator().manual_seed(1)).to(device)
        cases = bench.parasnn_cases(ann=model, relu_ann=relu, network=network, inputs=inputs,
                                    time_steps=args.time_steps, serial=not args.no_serial, trains=not args.no_trains)
        config = {"model": spec.name, "input_shape": list(spec.input_shape), "batch_size": batch_size,
                  "checkpoint": str(args.checkpoint), "activation": spec.activation.kind.value, "snn": how}
        results.append(bench.measure(cases, config=config, device=device, threads=args.threads, rounds=args.rounds,
                                     min_block_seconds=args.min_block_seconds, cap_seconds=args.cap_seconds,
                                     memory_cap_bytes=int(args.memory_cap_gib * 2**30), clock=args.clock,
                                     log=lambda line: print(line, file=sys.stderr, flush=True)))
    command = "parasnn " + shlex.join(sys.argv[1:]) if sys.argv and Path(sys.argv[0]).name == "parasnn" \
        else f"parasnn bench {args.checkpoint}"
    notes = [f"Network: {spec.name} from {args.checkpoint}; SNN {how}.",
             "`ann` is the checkpoint's ANN; `ann-relu` the same weights with ReLU (quantized ANNs only)."]
    machine = dict(bench.machine_info(device, args.threads),
                   malloc="glibc: freed memory kept (no mmap, no trim)" if kept else "as it comes")
    paths = bench.write_report(results, args.out, machine=machine, command=command, notes=notes,
                               plots=not args.no_plots)
    print(Path(paths["markdown"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
