"""``parasnn demo``: what parasnn does, on the embedded Fashion-MNIST network, in under a minute.

One table, one row per way of running the same trained QCFS network (L = 4) as a spiking
network, each with a line saying what the row shows: the parallel SNN at T = L (exact), the
serial simulation (the classic conversion error), T > L with and without L levels kept, the shipped
[STDC]-calibrated SNNs at T = 2 and T = 1, and PASCAL's exact serial SNN.

The calibrated SNNs ship beside the ANN (``assets/``); each checkpoint records the
``parasnn calibrate`` command that made it (``scripts/make_demo_assets.py`` repeats it).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .arguments import device

__all__ = ["add_command", "calibrated_asset", "CALIBRATED_TIME_STEPS"]

CALIBRATED_TIME_STEPS = (1, 2)


def calibrated_asset(time_steps: int) -> Path:
    """The shipped SNN calibrated for ``time_steps`` (see the module docstring)."""
    from .main import ASSETS
    return ASSETS / f"fashion_mnist_vgg_small_qcfs_calibrated_t{time_steps}.pt"


def add_command(commands) -> None:
    demo = commands.add_parser(
        "demo", help="convert and evaluate the embedded Fashion-MNIST network",
        description="The embedded QCFS network (L = 4) as a spiking network, run in every way parasnn offers, on "
                    "1000 embedded test images: exact at T = L, calibrated at T = 1 and 2, serial, PASCAL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N")
    demo.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    demo.set_defaults(handler=command_demo)


def command_demo(args) -> int:
    import torch

    from ..conversion.methods import neuron_factory
    from ..conversion.stages import ConversionConfig, convert
    from ..datasets.data import load_subset, make_loader
    from ..evaluation.accuracy import Form, ann_accuracy, snn_accuracy
    from ..io.checkpoint import check_snn_matches_ann, load_ann, load_snn
    from ..io.files import check_outputs, write_json
    from ..methods.pascal_evaluation import evaluate_pascal
    from .main import DEMO_CHECKPOINT, DEMO_TEST_SLICE

    assets = [DEMO_CHECKPOINT, DEMO_TEST_SLICE, *map(calibrated_asset, CALIBRATED_TIME_STEPS)]
    for path in assets:
        if not path.exists():
            raise SystemExit(f"parasnn demo: embedded file {path} is missing; reinstall parasnn")
    if args.json is not None:
        check_outputs({"--json": args.json}, inputs={str(path.name): path for path in assets})
    start = time.perf_counter()
    model, spec, checkpoint = load_ann(DEMO_CHECKPOINT)
    test, _ = load_subset(DEMO_TEST_SLICE)
    batches = [tuple(t.to(args.device) for t in batch) for batch in make_loader(test, batch_size=250, shuffle=False)]
    model = model.to(args.device)
    levels = spec.activation.levels
    network = convert(model)
    ann, _, samples = ann_accuracy(model, batches)
    rows = [("ANN", "QCFS, L = 4", ann, "the trained network (quantized activations, L levels)")]

    def snn(name, setting, net, steps, form, meaning):
        accuracy = snn_accuracy(net, batches, time_steps=steps, form=form).accuracy
        rows.append((name, setting, accuracy, meaning))

    with torch.no_grad():
        exact = all(torch.equal(network(x, time_steps=levels), model(x)) for x, _ in batches)
    snn("SNN parallel", f"T = L = {levels}", network, levels, Form.PARALLEL,
        "one pass, every spike train in closed form: " + ("the ANN's logits bit for bit" if exact else
                                                          "(logits differ: unexpected)"))
    snn("SNN serial", f"T = {levels}", network, levels, Form.SERIAL,
        "the same neurons stepped one time step at a time: spikes arrive unevenly (the classic conversion error)")
    snn("SNN parallel", f"T = {2 * levels}", network, 2 * levels, Form.PARALLEL,
        "more steps than levels: each neuron keeps the ANN's L levels, so the logits stay the ANN's")
    snn("SNN parallel", f"T = {2 * levels}, T levels", convert(model, config=ConversionConfig(keep_levels=False)),
        2 * levels, Form.PARALLEL, "a finer spike grid than the network was trained on is worse (keep_levels=False)")
    for steps in sorted(CALIBRATED_TIME_STEPS, reverse=True):
        calibrated, _, snn_checkpoint = load_snn(calibrated_asset(steps))
        check_snn_matches_ann(snn_checkpoint, checkpoint, snn_path=calibrated_asset(steps), ann_path=DEMO_CHECKPOINT)
        snn("SNN calibrated", f"T = {steps}", calibrated.to(args.device), steps, Form.PARALLEL,
            "distribution-aware calibration ([STDC]), no weight retrained: ultra-low latency")
    pascal = convert(model, neuron=neuron_factory("pascal")).to(args.device)
    evaluation = evaluate_pascal(model, pascal, batches, activity=False)
    rows.append(("PASCAL serial", f"T_eff = {evaluation.effective_latency}", evaluation.snn_accuracy,
                 "inhibitory spikes make the serial SNN exact, at the price of more steps"))
    seconds = time.perf_counter() - start

    width = max(len(f"{name}, {setting}") for name, setting, _, _ in rows)
    print(f"\nThe embedded {spec.name} (QCFS, L = {levels}), trained on Fashion-MNIST; {samples} test images "
          f"embedded with parasnn.\n")
    for name, setting, accuracy, meaning in rows:
        print(f"  {f'{name}, {setting}':<{width}}  {100 * accuracy:6.2f} %   {meaning}")
    print(f"\n{seconds:.0f} s in all. Full tables: docs/results.md; the calibrated SNNs were made by "
          "parasnn calibrate (the command is recorded in each checkpoint's config).")
    if args.json:
        write_json(args.json, {"model": spec.to_dict(), "samples": samples, "seconds": seconds,
                               "rows": [{"network": name, "setting": setting, "accuracy": accuracy, "meaning": meaning}
                                        for name, setting, accuracy, meaning in rows]})
    return 0
