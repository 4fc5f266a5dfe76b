"""Speed and memory of parasnn's parallel SNN against the ANN, the serial simulation,
SpikingJelly and FS-PC's time-folded network — same process, same batch, same threads.

    python benchmarks/speed.py --out runs/bench/speed                 # the full grid
    python benchmarks/speed.py --models vgg-small --batch-sizes 1 --time-steps 1,4 --rounds 3

Models (random weights: Kaiming initialisation, seed 0, BatchNorm in eval at its initial
statistics; speed does not depend on the weights' values): VGG-16 and ResNet-20 on
3×32×32 inputs, the small Fashion-MNIST VGG on 1×28×28, all with QCFS activations (L = 4,
θ = 1); torchvision's ResNet-18, VGG-11-BN, DenseNet-121 and MobileNetV2 (10 classes, 3×64×64
inputs to keep a 2-core run short) with their ReLUs (MobileNetV2: ReLU6) replaced by QCFS
(L = 4, θ from one random batch, :func:`parasnn.conversion.stages.quantize_relus`) — there
``ann-relu`` is the torchvision network itself (in-place ReLUs), the network a user starts from. Engines, per model × batch size × T (see :mod:`parasnn.bench.measure` for the method):

=================  ===========================================================================
``ann``            the QCFS ANN (the network's own activations: the same elementwise work)
``ann-relu``       the same weights with ReLU (the cheapest activation), reported separately
``parallel``       parasnn's parallel SNN, counts only (one pass)
``parallel-fused``  the same network after :func:`parasnn.simulation.compiled.fuse` (one fused
                   kernel per neuron layer; bit-equal outputs)
``parallel+trains``  the same, with the spike train ``(T, B, ...)`` of every neuron layer built
``serial``         parasnn's serial simulation (the fx graph once per step)
``spikingjelly``   SpikingJelly 2.0.0's converted network, multi-step IF mode
``folded``         FS-PC's reference style: T copies of the input through parallel neurons
=================  ===========================================================================

Writes ``speed.json``, ``speed.md`` and PNG plots into ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling baselines module

from baselines import folded_network, run_folded, run_spikingjelly, spikingjelly_network  # noqa: E402

from parasnn.bench import measure as bench  # noqa: E402
from parasnn.cli.arguments import device as device_argument  # noqa: E402
from parasnn.conversion.stages import convert, quantize_relus  # noqa: E402
from parasnn.neurons.fused import cpu_kernels  # noqa: E402
from parasnn.simulation.compiled import fuse  # noqa: E402
from parasnn.zoo.models import ActivationSpec, ModelSpec, build_model  # noqa: E402

MODELS = {"vgg16": (3, 32, 32), "resnet20": (3, 32, 32), "vgg-small": (1, 28, 28), "resnet18": (3, 64, 64),
          "vgg11_bn": (3, 64, 64), "densenet121": (3, 64, 64), "mobilenet_v2": (3, 64, 64)}
# torchvision's networks (random weights, 10 classes) as a user converts them: ReLUs (ReLU6 in
# MobileNetV2) replaced by QCFS with quantize_relus, then convert.
TORCHVISION = {"resnet18", "vgg11_bn", "densenet121", "mobilenet_v2"}
FOLDED, SPIKINGJELLY, FUSED = "folded", "spikingjelly", "parallel-fused"
RATIOS = bench.PARASNN_RATIOS + (bench.RatioSpec(FUSED, bench.ANN_RELU), bench.RatioSpec(FUSED, bench.PARALLEL),
                                 bench.RatioSpec(bench.SERIAL, FUSED),
                                 bench.RatioSpec(SPIKINGJELLY, bench.PARALLEL),
                                 bench.RatioSpec(FOLDED, bench.PARALLEL),
                                 bench.RatioSpec(SPIKINGJELLY, bench.SERIAL))
NOTES = (
    "Random weights (Kaiming initialisation, seed 0; BN in eval): speed does not depend on the weights' values. "
    "QCFS activations, L = 4, θ = 1.",
    "`ann` is the QCFS ANN (same elementwise work as the SNN); `ann-relu` the same weights with ReLU.",
    "`spikingjelly`: SpikingJelly 2.0.0 ann2snn.Converter(RateCodingRecipe) on the ReLU twin, scales set to the "
    "QCFS θ, v₀ = θ/2 (through its neuron_factory), IF nodes in multi-step mode; on the CPU its if_multi_step "
    "operator is its PyTorch reference, a loop over T (benchmarks/baselines.py says why each correction is needed). "
    "It folds BN into the convolutions.",
    "`parallel-fused`: parasnn.simulation.compiled.fuse(network), one fused C++ kernel per neuron layer, called "
    "from a compiled plan of the graph "
    "(bit-equal outputs; docs/speed.md).",
    "`serial` is parasnn.simulation.forms.serial_forward: the fx graph interpreted once per step (it also counts "
    "spikes per layer); `parallel+trains` is parasnn.simulation.forms.spike_trains for every neuron layer.",
    "`folded`: FS-PC's reference style, T copies of the input in the batch through parallel neurons that "
    "materialise their trains.",
    "Ratios are per round (paired), median [q1–q3]; engines whose cost grows with T are capped, skipped cases "
    "are listed with their reason.",
)


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names (default: all)")
    parser.add_argument("--width", type=int, help="base width of every model (default: each model's own)")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 128], help="default 1,128")
    parser.add_argument("--batch-sizes-for", action="append", default=["vgg-small=1,8,32,128"],
                        metavar="MODEL=B1,B2", help="batch sizes for one model (the batch-size scaling plot); "
                                                    "default vgg-small=1,8,32,128")
    parser.add_argument("--time-steps", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--min-block-seconds", type=float, default=0.05,
                        help="each timing block repeats a case until it lasts this long (default 0.05)")
    parser.add_argument("--cap-seconds", type=float, default=5.0,
                        help="skip a T of serial/trains/SpikingJelly/folded once one run would take longer (default 5)")
    parser.add_argument("--memory-cap-gib", type=float, default=4.0,
                        help="... or need more memory than this (default 4 GiB)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"torch threads for every engine (default {torch.get_num_threads()})")
    parser.add_argument("--device", type=device_argument, default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--clock", choices=bench.CLOCKS, default="wall",
                        help="wall (default) or cpu: CPU time of the process, robust when other jobs share the "
                             "cores (use with --threads 1)")
    parser.add_argument("--no-spikingjelly", action="store_true", help="leave the SpikingJelly baseline out")
    parser.add_argument("--no-folded", action="store_true", help="leave the FS-PC folded baseline out")
    parser.add_argument("--no-fused", action="store_true", help="leave the fused parallel network out")
    parser.add_argument("--no-serial", action="store_true", help="leave the serial simulation out")
    parser.add_argument("--no-trains", action="store_true", help="leave parallel+trains out")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc malloc keeps freed memory (no page faults on every pass; see "
                             "parasnn.bench.measure.keep_freed_cpu_memory); default: the allocator as it comes")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/speed"))
    return parser


def _share_weights_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy that shares every parameter and buffer with ``model`` (no extra weights)."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def torchvision_qcfs(name: str, *, shape: tuple[int, ...], device: torch.device,
                     seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(QCFS network, the torchvision ReLU network it comes from)`` for a torchvision model."""
    import torchvision

    relu = getattr(torchvision.models, name)(num_classes=10).eval().to(device)
    calibration = [(torch.randn(8, *shape, generator=torch.Generator().manual_seed(seed + 3)).to(device), None)]
    return quantize_relus(relu, calibration, levels=4).to(device), relu


def model_cases(name: str, *, batch_size: int, time_steps: list[int], width: int | None, device: torch.device,
                seed: int, spikingjelly: bool, folded: bool, fused: bool = True, serial: bool = True,
                trains: bool = True) -> tuple[list[bench.Case], dict, list[str]]:
    """Every engine of one model × batch size, as :class:`parasnn.bench.measure.Case` objects."""
    shape = MODELS[name]
    torch.manual_seed(seed)
    if name in TORCHVISION:
        model, relu = torchvision_qcfs(name, shape=shape, device=device, seed=seed)
        resolved_width = None
    else:
        spec = ModelSpec(name=name, input_shape=shape, num_classes=10, width=width,
                         activation=ActivationSpec(kind="qcfs", levels=4, threshold=1.0))
        model = build_model(spec).eval().to(device)
        relu = bench.relu_twin(model).to(device)
        resolved_width = spec.resolved_width
    network = convert(model).to(device)
    inputs = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    cases = bench.parasnn_cases(ann=model, relu_ann=relu, network=network, inputs=inputs, time_steps=time_steps,
                                serial=serial, trains=trains)
    notes = []
    if fused:
        fast = fuse(network)
        kernels = cpu_kernels()
        notes.append("fused kernels: " + (f"built or loaded in {kernels.seconds:.1f} s by this process (compiled "
                                          "once per machine, then loaded from PyTorch's extension cache)"
                                          if kernels is not None else "unavailable here: parallel-fused ran unfused"))
        for t in time_steps:
            cases.append(bench.Case(FUSED, t, lambda t=t: fast(inputs, time_steps=t)))
    if folded:
        for t in time_steps:
            net = _share_weights_copy(folded_network(model, time_steps=t))
            cases.append(bench.Case(FOLDED, t, lambda t=t, net=net: run_folded(net, inputs, time_steps=t),
                                    grows_with_time=True))
    if spikingjelly:
        try:
            calibration = [(torch.randn(8, *shape, generator=torch.Generator().manual_seed(seed + 2)).to(device),
                            None)]
            sj = spikingjelly_network(model, calibration)
        except ImportError as error:
            notes.append(f"SpikingJelly left out: {error}")
        except (ValueError, RuntimeError, TypeError, NotImplementedError) as error:  # its converter refuses the graph
            notes.append(f"SpikingJelly left out for {name}: its converter fails ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:160]})")
        else:
            for t in time_steps:
                cases.append(bench.Case(SPIKINGJELLY, t, lambda t=t: run_spikingjelly(sj, inputs, time_steps=t),
                                        grows_with_time=True))
    config = {"model": name, "input_shape": list(shape), "batch_size": batch_size, "width": resolved_width,
              "weights": f"random (seed {seed})", "activation": "qcfs L=4 θ=1"}
    return cases, config, notes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = args.device
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    per_model = {}
    for entry in args.batch_sizes_for:
        model, _, sizes = entry.partition("=")
        per_model[model.strip()] = _int_list(sizes)
    kept = bench.keep_freed_cpu_memory() if args.keep_freed_memory else False
    machine = bench.machine_info(device, args.threads)
    machine["malloc"] = "glibc: freed memory kept (no mmap, no trim)" if kept else "as it comes"
    command = "python " + shlex.join([f"benchmarks/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
    # The notes on the baselines only where they were run.
    notes = [n for n in NOTES if not (n.startswith("`spikingjelly`") and args.no_spikingjelly)
             and not (n.startswith("`folded`") and args.no_folded)
             and not (n.startswith("`parallel-fused`") and args.no_fused)]
    results = []
    for name in models:
        for batch_size in per_model.get(name, args.batch_sizes):
            print(f"{name}, batch {batch_size}, {device}, {args.threads} threads", file=sys.stderr, flush=True)
            cases, config, extra = model_cases(name, batch_size=batch_size, time_steps=args.time_steps,
                                               width=args.width, device=device, seed=args.seed,
                                               spikingjelly=not args.no_spikingjelly, folded=not args.no_folded,
                                               fused=not args.no_fused, serial=not args.no_serial,
                                               trains=not args.no_trains)
            notes += [n for n in extra if n not in notes]
            results.append(bench.measure(cases, config=config, device=device, threads=args.threads,
                                         rounds=args.rounds, min_block_seconds=args.min_block_seconds,
                                         cap_seconds=args.cap_seconds,
                                         memory_cap_bytes=int(args.memory_cap_gib * 2**30), ratio_specs=RATIOS,
                                         clock=args.clock,
                                         log=lambda line: print(line, file=sys.stderr, flush=True)))
            del cases
    machine["load_average_end"] = bench.machine_info(device, args.threads).get("load_average")
    paths = bench.write_report(results, args.out, machine=machine, command=command, notes=notes,
                               plots=not args.no_plots, batch_plot_time_steps=8)
    print(Path(paths["markdown"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
