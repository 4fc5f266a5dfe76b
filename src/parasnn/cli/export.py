"""``parasnn export`` — write a converted network in an exchange format.

::

    parasnn export NET --format nir --out net.nir [--input-shape 3,32,32] [--max-pool sum-pool]
    parasnn export SNN.pt --format parasnn --out net/      # checkpoint → safetensors + JSON

``NET`` is a directory written by ``parasnn.save`` / ``parasnn convert --model ...`` or an SNN
checkpoint from ``parasnn convert``. ``--format nir`` writes the Neuromorphic Intermediate
Representation (docs/nir.md says what other tools reproduce); ``--format parasnn`` writes the
portable directory that ``parasnn.load`` reads in any process.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import positive_int_list

__all__ = ["add_command", "load_network"]


def load_network(path: Path):
    """``(network, input_shape or None)`` from a saved directory or an SNN checkpoint file."""
    if path.is_dir():
        from ..io.portable import load, read_description
        shape = read_description(path).get("input_shape")
        return load(path), tuple(shape) if shape else None
    from ..io.checkpoint import load_snn
    network, spec, _ = load_snn(path)
    return network, tuple(spec.input_shape)


def add_command(commands) -> None:
    parser = commands.add_parser(
        "export", help="write a converted network as NIR or as safetensors + JSON",
        description="Write a converted network in an exchange format: nir (the Neuromorphic Intermediate "
                    "Representation read by Norse, snnTorch, sinabs, Lava, ...) or parasnn (weights as "
                    "safetensors plus a JSON graph; parasnn.load reads it without pickled code).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("network", type=Path, help="directory from parasnn.save / parasnn convert --model, or an "
                                                   "SNN checkpoint (.pt) from parasnn convert")
    parser.add_argument("--format", choices=["nir", "parasnn"], default="nir", help="what to write")
    parser.add_argument("--out", type=Path, required=True, help="file (nir) or directory (parasnn) to write")
    parser.add_argument("--input-shape", type=positive_int_list,
                        help="one input without the batch axis, e.g. 3,32,32 (default: recorded with the network)")
    parser.add_argument("--amplitudes", choices=["scale", "fold"], default="scale",
                        help="nir: spike amplitudes as Scale nodes, or folded into the next layer's weights "
                             "(for importers without Scale, e.g. Norse 1.1)")
    parser.add_argument("--max-pool", choices=["refuse", "sum-pool"], default="refuse",
                        help="nir: NIR has no max-pooling; sum-pool writes a SumPool2d tagged for parasnn (other "
                             "tools then run a sum-pool)")
    parser.set_defaults(handler=_command_export)


def _command_export(args) -> int:
    network, recorded = load_network(args.network)
    shape = tuple(args.input_shape) if args.input_shape else recorded
    if args.format == "parasnn":
        from ..io.portable import save
        save(network, args.out, input_shape=shape)
        print(f"saved {network.source} -> {args.out}/ (network.json + weights.safetensors)")
        return 0
    if shape is None:
        raise ValueError(f"{args.network} records no input shape; pass --input-shape, e.g. 3,32,32")
    from ..io.nir import write_nir
    write_nir(network, args.out, shape, amplitudes=args.amplitudes, max_pool=args.max_pool)
    print(f"exported {network.source} to NIR -> {args.out}")
    return 0
