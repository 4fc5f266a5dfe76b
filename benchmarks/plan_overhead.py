"""Where a fused network's time goes beyond its ReLU ANN at small batches: the compiled plan
against the same graph with ``torch.relu_`` in place of each fused kernel, the per-call
validity and input checks, the neuron calls on their own, and how many
``nn.Module.__getattr__`` calls each forward makes (``docs/speed.md``, DenseNet-121 at batch 1).

    python benchmarks/plan_overhead.py --model densenet121 --batch-size 1 --time-steps 8 --rounds 40

Cases, timed interleaved (each round runs every case once, in a seeded random order; ratios
paired per round, median [q1–q3]), CPU time of the process, one thread:

=====================  ======================================================================
``ann-relu``           the ReLU network the QCFS network came from (torchvision: in-place ReLUs)
``parallel-fused``     ``fuse(network)(x, time_steps=T)``: checks, then the compiled plan
``plan``               the compiled plan alone (no checks)
``plan, relu_``        the plan's graph with ``torch.relu_`` in place of each fused kernel
``plan, nested``       the plan as it was generated before (layers read through the network's
                       module tree, constants as buffers: ``nn.Module.__getattr__`` per read)
``checks``             ``plan.valid()`` and the input's finiteness test
=====================  ======================================================================
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import fx, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling speed module

from speed import MODELS, TORCHVISION, torchvision_qcfs  # noqa: E402

from parasnn.bench.measure import relu_twin  # noqa: E402
from parasnn.conversion.network import all_finite  # noqa: E402
from parasnn.conversion.stages import convert  # noqa: E402
from parasnn.neurons.fused import FusedIFNeuron  # noqa: E402
from parasnn.simulation.compiled import fuse, plain_attributes  # noqa: E402
from parasnn.zoo.models import ActivationSpec, ModelSpec, build_model  # noqa: E402


def networks(name: str, seed: int):
    """``(QCFS ANN, ReLU ANN)`` as ``benchmarks/speed.py`` builds them."""
    shape = MODELS[name]
    torch.manual_seed(seed)
    if name in TORCHVISION:
        return torchvision_qcfs(name, shape=shape, device=torch.device("cpu"), seed=seed)
    model = build_model(ModelSpec(name=name, input_shape=shape, num_classes=10,
                                  activation=ActivationSpec(kind="qcfs", levels=4, threshold=1.0))).eval()
    return model, relu_twin(model)


def relu_plan(plan) -> fx.GraphModule:
    """The plan's graph with ``torch.relu_`` in place of each fused kernel call (same layers,
    same attribute reads for them): what the plan would cost with a ReLU."""
    graph = copy.deepcopy(plan.graph_module.graph)
    for node in list(graph.nodes):
        if node.op == "call_function" and getattr(node.target, "__name__", "").endswith("_forward"):
            with graph.inserting_before(node):
                relu = graph.call_function(torch.relu_, (node.args[0],))
            node.replace_all_uses_with(relu)
            graph.erase_node(node)
    for node in reversed(list(graph.nodes)):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    attributes = {node.target: getattr(plan.graph_module, node.target) for node in graph.nodes
                  if node.op in ("call_module", "get_attr")}
    module = fx.GraphModule(attributes, graph)
    plain_attributes(module, attributes)
    return module


def nested_plan(plan, root: nn.Module) -> fx.GraphModule:
    """The plan's graph as plans were generated before their attributes were flattened:
    layers under their dotted paths in the network and constants as registered buffers, so
    that every read goes through ``nn.Module.__getattr__`` (called through
    ``nn.Module.__call__``, as those plans were)."""
    paths = {id(value): path for path, value in [*root.named_modules(), *root.named_parameters(),
                                                  *root.named_buffers()]}
    graph = copy.deepcopy(plan.graph_module.graph)
    attributes = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            value = getattr(plan.graph_module, node.target)
            if not node.target.startswith("_plan_constant_"):
                node.target = paths[id(value)]
            attributes[node.target] = value
    return fx.GraphModule(attributes, graph)


def getattr_calls(run) -> int:
    """How many ``nn.Module.__getattr__`` calls (attribute reads that miss the instance
    dictionary: submodules, parameters, buffers) one ``run()`` makes."""
    original = nn.Module.__getattr__
    count = 0

    def counting(self, name):
        nonlocal count
        count += 1
        return original(self, name)

    nn.Module.__getattr__ = counting
    try:
        run()
    finally:
        nn.Module.__getattr__ = original
    return count


def interleaved(cases: dict, *, rounds: int, block_seconds: float, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each case, one block per case per round, in a shuffled order."""
    sizes = {}
    for label, run in cases.items():
        run()
        start = time.process_time()
        run(), run()
        sizes[label] = max(1, int(block_seconds / max((time.process_time() - start) / 2, 1e-7)))
    times = {label: [] for label in cases}
    order, rng = list(cases), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for label in order:
            run, size = cases[label], sizes[label]
            start = time.process_time()
            for _ in range(size):
                run()
            times[label].append((time.process_time() - start) / size)
    return times


def neuron_calls(fast, plan, inputs, time_steps: int, *, repeats: int = 50) -> dict[str, float]:
    """Microseconds per neuron call on the network's own current shapes: the fused kernel as
    the plan calls it (in place), ``torch.relu_`` and an in-place ``nn.ReLU`` module."""
    shapes = []
    hooks = [neuron.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(args[0].shape),
                                              with_kwargs=True) for _, neuron in fast.neurons()]
    try:
        fast(*inputs, time_steps=time_steps)  # hooked: the modules run, the hooks see the currents
    finally:
        for hook in hooks:
            hook.remove()
    currents = [torch.randn(shape) for shape in shapes]
    calls = [node for node in plan.graph_module.graph.nodes if node.op == "call_function"
             and getattr(node.target, "__name__", "").endswith("_forward")]
    arguments = [[getattr(plan.graph_module, a.target) if isinstance(a, fx.Node) else a for a in node.args[1:]]
                 for node in calls]
    kernels = [node.target for node in calls]
    module = nn.ReLU(inplace=True)
    runs = {"fused kernel (in place)": lambda: [k(c, *a) for k, c, a in zip(kernels, currents, arguments)],
            "torch.relu_": lambda: [torch.relu_(c) for c in currents],
            "nn.ReLU(inplace=True)": lambda: [module(c) for c in currents]}
    times = interleaved(runs, rounds=15, block_seconds=0.02)
    return {label: statistics.median(t) / len(currents) * 1e6 for label, t in times.items()}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return tuple(ordered[int(p * (len(ordered) - 1))] for p in (0.25, 0.5, 0.75))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="densenet121", choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--time-steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block-seconds", type=float, default=0.1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, relu = networks(args.model, 0)
    network = convert(model)
    fast = fuse(network)
    x = torch.randn(args.batch_size, *MODELS[args.model], generator=torch.Generator().manual_seed(1))
    steps = args.time_steps
    with torch.no_grad():
        expected = network(x, time_steps=steps)
        assert torch.equal(fast(x, time_steps=steps), expected)  # makes the plan
        assert torch.equal(fast(x, time_steps=steps), expected)  # runs it
        plan = next(reversed(fast._plans.values()))
        if plan is None:
            raise SystemExit(f"{args.model}: no compiled plan for this signature")
        with_relu, nested = relu_plan(plan), nested_plan(plan, fast.graph_module)
        assert torch.equal(nested(steps, x), expected)
        cases = {"ann-relu": lambda: relu(x), "parallel-fused": lambda: fast(x, time_steps=steps),
                 "plan": lambda: plan(steps, x), "plan, relu_": lambda: with_relu.forward(steps, x),
                 "plan, nested": lambda: nested(steps, x),
                 "checks": lambda: (plan.valid(), all_finite(x))}
        times = interleaved(cases, rounds=args.rounds, block_seconds=args.block_seconds)
        reads = {label: getattr_calls(run) for label, run in cases.items()}
        per_call = neuron_calls(fast, plan, (x,), steps)
    neurons = sum(isinstance(m, FusedIFNeuron) for _, m in fast.neurons())
    print(f"### {args.model}, batch {args.batch_size}, T = {steps}: {neurons} fused IF neurons, "
          f"{args.rounds} rounds, CPU time, 1 thread\n")
    print("| case | ms per call (median) | / ann-relu, paired: median [q1–q3] | nn.Module.__getattr__ calls |")
    print("|---|---:|---:|---:|")
    base = times["ann-relu"]
    for label, values in times.items():
        q1, median, q3 = quartiles([a / b for a, b in zip(values, base)])
        print(f"| {label} | {statistics.median(values) * 1e3:.3f} | {median:.3f} [{q1:.3f}–{q3:.3f}] | "
              f"{reads.get(label, '')} |")
    print("\n| one neuron call, on this network's currents | µs per call (mean over the layers) |\n|---|---:|")
    for label, micros in per_call.items():
        print(f"| {label} | {micros:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
