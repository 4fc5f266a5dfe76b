"""Where a converted network loses: each neuron layer's error against the ANN's activation,
parallel and serial, on test images.

    parasnn convert runs/fmnist-resnet20-relu/model.pt --out runs/r20-fspc.pt      # or parasnn calibrate
    python benchmarks/layer_errors.py runs/fmnist-resnet20-relu/model.pt runs/r20-fspc.pt -T 4

For every neuron layer (in graph order) and each form (``parallel``: one pass; ``serial``:
T steps, as hardware runs it) it prints the relative error ``‖a_SNN − a_ANN‖ / ‖a_ANN‖`` of
the layer's time-averaged output (spike count × spike size / T) against the ANN's activation
at the same site, on the same images, and whether the layer's input is a residual sum (an
``add`` of two branches in the graph). Then the logits' relative error and both accuracies.
The images are a seeded random sample of the test split (``--images``), never the ones the
SNN was calibrated on.

Errors compound: a layer's error includes what reached it from below. The step from one
layer to the next is the layer's own contribution.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import Tensor, fx

from parasnn.conversion.network import SpikingNetwork, forward_hooks
from parasnn.datasets.data import load_dataset, make_loader
from parasnn.datasets.splits import sample_subset
from parasnn.evaluation.ablation import _ann_sites
from parasnn.io.checkpoint import load_ann, load_snn
from parasnn.neurons.base import per_channel
from parasnn.simulation.forms import parallel_simulation, serial_simulation


def _residual_inputs(network: SpikingNetwork) -> dict[str, bool]:
    """``{neuron path: whether its input is computed by an add of two tensors}`` (the node
    that feeds the neuron; in the zoo's residual blocks the sum feeds the neuron directly)."""
    adds = {"add", "iadd", "__add__"}
    answer = {}
    for node in network.graph_module.graph.nodes:
        if node.op == "call_module" and node.target in dict(network.neurons()):
            source = node.args[0] if node.args else None
            answer[node.target] = isinstance(source, fx.Node) and (
                getattr(source.target, "__name__", str(source.target)) in adds)
    return answer


def _neuron_values(result, network: SpikingNetwork, time_steps: int) -> dict[str, Tensor]:
    """Time-averaged output of each IF neuron layer (an FS-PC network) from its spike counts:
    ``count·θ_post/T'`` (``T' = min(T, L)`` for a neuron keeping its QCFS layer's L levels)."""
    values = {}
    for path, neuron in network.neurons():
        counts = result.spike_counts[path]
        values[path] = counts * per_channel(neuron.amplitude, counts) / neuron.levels_at(time_steps)
    return values


def layer_errors(ann_path: str, snn_path: str, *, time_steps: int, images: int = 512, seed: int = 0,
                 batch_size: int = 128) -> dict:
    torch.manual_seed(seed)
    model, _, checkpoint = load_ann(ann_path)
    network, _, _ = load_snn(snn_path)
    model.eval()
    network.eval()
    config = checkpoint.get("config") or {}
    splits = load_dataset(config.get("dataset", "fashion-mnist"), data_dir=config.get("data_dir"))
    test = sample_subset(splits.test, images, seed=seed)
    ann_graph = _ann_sites(model)
    paths = [path for path, _ in network.neurons()]
    residual = _residual_inputs(network)
    sums = {form: {path: [0.0, 0.0] for path in paths + ["logits"]} for form in ("parallel", "serial")}
    correct = {"ann": 0, "parallel": 0, "serial": 0}
    seen = 0
    for inputs, labels in make_loader(test, batch_size=batch_size, shuffle=False):
        recorded: dict[str, Tensor] = {}

        def recorder(path):
            def hook(module, args, output):
                recorded[path] = output.detach()
            return hook

        with torch.no_grad(), forward_hooks([(ann_graph.get_submodule(p), recorder(p)) for p in paths]):
            ann_logits = ann_graph(inputs)
        correct["ann"] += int((ann_logits.argmax(1) == labels).sum())
        for form, simulate in (("parallel", parallel_simulation), ("serial", serial_simulation)):
            result = simulate(network, inputs, time_steps=time_steps)
            values = _neuron_values(result, network, time_steps)
            values["logits"] = result.output
            recorded["logits"] = ann_logits
            for path in paths + ["logits"]:
                difference = (values[path] - recorded[path]).double()
                sums[form][path][0] += float((difference * difference).sum())
                sums[form][path][1] += float((recorded[path].double() ** 2).sum())
            correct[form] += int((result.output.argmax(1) == labels).sum())
        seen += len(labels)
    rows = [{"layer": path, "residual_input": residual.get(path, False),
             **{form: (sums[form][path][0] / max(sums[form][path][1], 1e-30)) ** 0.5 for form in sums}}
            for path in paths + ["logits"]]
    return {"ann": ann_path, "snn": snn_path, "time_steps": time_steps, "images": seen,
            "accuracy": {key: value / seen for key, value in correct.items()}, "layers": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ann", help="the ANN checkpoint (parasnn train's model.pt)")
    parser.add_argument("snn", help="its converted or calibrated SNN (parasnn convert / calibrate --out)")
    parser.add_argument("-T", "--time-steps", type=int, default=4)
    parser.add_argument("--images", type=int, default=512, help="test images, a seeded random sample (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = layer_errors(args.ann, args.snn, time_steps=args.time_steps, images=args.images, seed=args.seed)
    print(f"T = {args.time_steps}, {result['images']} test images: accuracy ANN "
          f"{100 * result['accuracy']['ann']:.2f} %, parallel {100 * result['accuracy']['parallel']:.2f} %, "
          f"serial {100 * result['accuracy']['serial']:.2f} %")
    print("| layer | input is a residual sum | parallel: relative error | serial: relative error |")
    print("|---|---|---:|---:|")
    for row in result["layers"]:
        print(f"| {row['layer']} | {'yes' if row['residual_input'] else ''} | {row['parallel']:.3f} | "
              f"{row['serial']:.3f} |")
    if args.json:
        from parasnn.io.files import write_json
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
