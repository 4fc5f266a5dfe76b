"""``--model`` for ``parasnn convert|calibrate|evaluate``: the user's own architecture and weights.

::

    parasnn convert --model torchvision:resnet18 --weights w.pt --input-shape 3,32,32 \\
        --dataset cifar10 --out net/
    parasnn calibrate --model mypackage.nets:small_cnn --weights w.safetensors --dataset digits -T 2 --out net/
    parasnn evaluate --model torchvision:resnet18 --weights w.pt --input-shape 3,32,32 --dataset cifar10 \\
        --snn net/ -T 1,2,4

The converted network is written with ``parasnn.save`` (a directory: weights as safetensors,
graph as JSON; ``parasnn.load`` reads it in any process, ``parasnn export`` turns it into NIR).
Calibration data are the first ``--calibration-size`` images of the data set's training split;
the test split is used by ``evaluate`` only.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .arguments import positive_int, positive_int_list

__all__ = ["add_model_arguments", "convert_external", "calibrate_external", "evaluate_external",
           "require_model_or_checkpoint"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your own model (instead of a parasnn checkpoint)")
    group.add_argument("--model", help="torchvision:NAME (e.g. torchvision:resnet18) or package.module:factory")
    group.add_argument("--weights", type=Path,
                       help="state dict (.pt/.pth saved with torch.save(model.state_dict(), ...)) or .safetensors")
    group.add_argument("--input-shape", type=positive_int_list, help="one input without batch axis, e.g. 3,32,32 "
                                                                     "(the data set's images are resized to it)")
    group.add_argument("--dataset", help="fashion-mnist, cifar10, cifar100, digits or image-folder: calibration "
                                         "images from its training split, test images from its test split")
    group.add_argument("--num-classes", type=positive_int, help="passed to the model factory as num_classes")


def require_model_or_checkpoint(args, command: str) -> None:
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError(f"parasnn {command} takes either a checkpoint file or --model (with --weights), not "
                         f"{'both' if args.model else 'neither'}")


def _model_and_data(args, *, need_data: bool):
    from ..zoo.external import dataset_for, external_model
    model = external_model(args.model, args.weights, num_classes=args.num_classes)
    shape = tuple(args.input_shape) if args.input_shape else None
    if args.dataset is None:
        if need_data:
            raise ValueError(f"--model {args.model}: pass --dataset (calibration and test images)")
        return model, shape, None
    splits = dataset_for(args.dataset, shape, data_dir=args.data_dir)
    return model, shape or tuple(splits.info.input_shape), splits


def _calibration_batches(splits, size: int | None, batch_size: int, *, shard: bool = False):
    """The first ``size`` training images in batches (a streamed folder's decoded when used);
    with ``shard``, under torchrun this process's share, ``batch_size`` being the global batch."""
    from ..datasets.data import first_examples
    from ..datasets.splits import batch_sequence
    from ..runtime import distributed
    data = first_examples(splits.train, size)
    processes = distributed.world_size() if shard else 1
    if processes == 1:
        return batch_sequence(data, batch_size=batch_size)
    if batch_size % processes:
        raise ValueError(f"--batch-size {batch_size} must be divisible by the {processes} processes")
    return batch_sequence(data, batch_size=batch_size // processes, num_replicas=processes, rank=distributed.rank())


def _write(network, args, resolved: dict, shape) -> None:
    from ..io.files import write_json
    from ..io.portable import save
    save(network.cpu(), args.out, input_shape=shape)
    write_json(args.out.with_name(args.out.name + ".config.json"), resolved)


def _resolved(args, command: str) -> dict:
    from .habits import arguments_record
    return {**arguments_record(args), "command": command, "model": args.model, "weights": str(args.weights) if args.weights else None,
            "input_shape": list(args.input_shape) if args.input_shape else None, "dataset": args.dataset,
            "num_classes": args.num_classes}


def convert_external(args) -> int:
    from ..conversion.methods import neuron_factory
    from ..conversion.stages import BatchNormMode, ConversionConfig, ThresholdStatistic, convert
    model, shape, splits = _model_and_data(args, need_data=False)
    config = ConversionConfig(levels=args.levels, threshold=ThresholdStatistic(args.percentile, args.threshold_scope),
                              batchnorm=BatchNormMode(args.batchnorm),
                              keep_levels=not getattr(args, "t_levels", False))
    data = None
    if splits is not None:
        data = [x for x, _ in _calibration_batches(splits, args.calibration_size, batch_size=256)]
    method = args.method or "fs-pc"
    network = convert(model, calibration_data=data, config=config, neuron=neuron_factory(method))
    _write(network, args, {**_resolved(args, "convert"), "method": method, "conversion": config.to_dict(),
                           "calibration_size": args.calibration_size}, shape)
    print(f"converted {args.model} ({len(list(network.neurons()))} neuron layers, method {method}) -> {args.out}/")
    return 0


def calibrate_external(args, config) -> int:
    from ..calibration.pipeline import calibrate_with_report
    from ..runtime import distributed
    model, shape, splits = _model_and_data(args, need_data=True)
    # Under torchrun each process calibrates on its shard; statistics and gradients are reduced.
    batches = _calibration_batches(splits, args.calibration_size, batch_size=args.batch_size, shard=True)
    start = time.perf_counter()
    network, report = calibrate_with_report(model.to(args.device), batches, config=config)
    seconds = time.perf_counter() - start
    if not distributed.is_main_process():  # written once
        return 0
    _write(network, args, {**_resolved(args, "calibrate"), "calibration": config.to_dict(),
                           "calibration_size": args.calibration_size, "seconds": seconds,
                           "report": report.to_dict()}, shape)
    print(f"calibrated {args.model} for T={config.time_steps} in {seconds:.1f} s -> {args.out}/")
    return 0


def evaluate_external(args, forms) -> int:
    import torch

    from ..conversion.stages import convert
    from ..datasets.data import first_examples, make_loader
    from ..datasets.splits import is_streamed
    from ..evaluation.accuracy import evaluate, format_table
    from ..runtime import distributed
    from ..io.files import write_json
    from ..io.portable import load
    model, shape, splits = _model_and_data(args, need_data=True)
    if args.snn is not None:
        network = load(args.snn)
    else:
        calibration = [x for x, _ in _calibration_batches(splits, args.calibration_size, batch_size=256)]
        network = convert(model, calibration_data=calibration)
    test = first_examples(splits.test, args.limit)
    # Under torchrun each process evaluates its shard (no padding: counts summed are exact).
    loader = make_loader(distributed.shard(test), batch_size=args.batch_size, shuffle=False)
    batches = loader if is_streamed(test) else list(loader)
    model, network = model.to(args.device), network.to(args.device)
    with torch.no_grad():
        report = evaluate(model, network, batches, time_steps=args.time_steps, forms=forms,
                          activity=not args.no_activity)
    if not distributed.is_main_process():
        return 0
    print(format_table(report, title=f"{args.model} on {splits.info.name} ({report.samples} test images)"))
    if args.json:
        write_json(args.json, {"config": {**_resolved(args, "evaluate"), "time_steps": args.time_steps},
                               **report.to_dict()})
    return 0
