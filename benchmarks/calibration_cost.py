"""What calibration costs, in training epochs of the same network on the same data.

    python benchmarks/calibration_cost.py --dataset fashion-mnist --threads 1

Times (same process, same threads) one training epoch of the network — ``parasnn train``'s
epoch: SGD, batch 128, augmentation, over the training split less the 5 000-image holdout —
and ``parasnn calibrate`` with every stage at its defaults of the same network, on the data
``parasnn calibrate`` uses by default: the stages learn on the training split (all of it, or
``--training-size`` images), the 5 000-image held-apart slice judges (``--calibration-size``);
batch 64, T = 4 unless ``--time-steps``. Reports both (wall and CPU seconds) and their
ratio; the goal of issue 15 is calibration ≤ 2 epochs. The fused CPU kernels the stages run
are built or loaded before the clock starts (``fused_kernels.load_seconds``: minutes of C++
compilation the first time on a machine, about a second from PyTorch's cache after).
``--train-limit`` times only that many training batches and scales the epoch up linearly
(said so in the output).
Weights: ``--checkpoint`` (e.g. the shipped trained Fashion-MNIST VGG), or the network at
its seeded initialisation. The cost does not depend on the values,
except that stage bias may stop early (on held-out loss) — it then costs less than here or
the same.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch


def _clock():
    return time.perf_counter(), time.process_time()


def _since(start):
    wall, cpu = _clock()
    return {"wall_seconds": round(wall - start[0], 2), "cpu_seconds": round(cpu - start[1], 2)}


def calibration_cost(*, dataset: str = "fashion-mnist", model_name: str = "vgg-small", time_steps: int = 4,
                     calibration_size: int = 5000, train_limit: int | None = None, seed: int = 0,
                     checkpoint: str | None = None, training_size: int | None = None, config=None) -> dict:
    """``{"epoch": ..., "calibrate": ..., "ratio": calibrate / epoch}`` (seconds, wall and CPU).
    ``checkpoint``: a trained ANN (``parasnn train``'s ``.pt``) to calibrate instead of the
    seeded initialisation (same architecture for the epoch)."""
    import torch.nn.functional as F

    from parasnn.calibration.pipeline import CalibrationConfig, calibrate_with_report
    from parasnn.datasets.data import augment, calibration_split, load_dataset, make_loader
    from parasnn.training.train import TrainConfig, build_optimizer, cosine_schedule
    from parasnn.zoo.models import build_model

    splits = load_dataset(dataset)
    train_config = TrainConfig(model=model_name, dataset=dataset, seed=seed)
    torch.manual_seed(seed)
    model = build_model(train_config.model_spec(splits.info.input_shape, splits.info.num_classes))
    if checkpoint is not None:
        from parasnn.io.checkpoint import load_ann
        trained, spec, _ = load_ann(checkpoint)
        model = build_model(spec)
        initial = trained
    else:
        initial = copy.deepcopy(model)
    rest, calibration = calibration_split(splits.train, size=train_config.holdout, seed=seed)

    # one training epoch, as parasnn train runs it
    loader = make_loader(rest, batch_size=train_config.batch_size, shuffle=True, seed=seed)
    steps = len(loader) if train_limit is None else min(train_limit, len(loader))
    optimizer = build_optimizer(model, train_config)
    schedule = cosine_schedule(optimizer, total_steps=len(loader) * train_config.epochs)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = _clock()
    for index, (images, labels) in enumerate(loader):
        if index >= steps:
            break
        loss = F.cross_entropy(model(augment(images, generator=generator)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    epoch = _since(start)
    scale = len(loader) / steps
    epoch = {key: round(value * scale, 2) for key, value in epoch.items()}

    # parasnn calibrate, every stage at its defaults (or ``config``), on its default data. The
    # fused kernels are built (first use on a machine) or loaded (cached) first, and reported
    # apart: a one-off per machine, not a cost of each calibration.
    from parasnn.datasets.splits import sample_subset
    from parasnn.neurons.fused import cpu_kernels
    built = cpu_kernels()
    kernels = {"available": built is not None, "load_seconds": None if built is None else round(built.seconds, 2)}
    config = config if config is not None else CalibrationConfig(time_steps=time_steps)
    subset = sample_subset(calibration, calibration_size, seed=seed)
    batches = list(make_loader(subset, batch_size=config.batch_size, shuffle=False))
    training = list(make_loader(sample_subset(rest, training_size, seed=seed), batch_size=config.batch_size,
                                shuffle=False))
    start = _clock()
    _, report = calibrate_with_report(initial.eval(), batches, config=config, training_data=training)
    calibrate = _since(start)
    return {"dataset": dataset, "model": model_name, "time_steps": time_steps, "training_images": len(rest),
            "epoch_batches_timed": steps, "epoch_batches": len(loader), "epoch_extrapolated": steps < len(loader),
            "calibration_images": len(subset), "training_images_calibrated_on": sum(len(y) for _, y in training),
            "stages": [s.value for s in config.stages], "config": config.to_dict(),
            "epoch": epoch, "calibrate": calibrate, "fused_kernels": kernels,
            "ratio_wall": round(calibrate["wall_seconds"] / epoch["wall_seconds"], 3),
            "ratio_cpu": round(calibrate["cpu_seconds"] / epoch["cpu_seconds"], 3),
            # steps per stage (stage bias may stop early) and whether the guard reverted one
            "stages_run": [{key: value for key, value in stage.items() if not isinstance(value, (dict, list))}
                           for stage in report.to_dict()["stages"]],
            "held_out": report.to_dict()["validation"],
            "bias_validations": next((stage["validations"] for stage in report.to_dict()["stages"]
                                      if stage["stage"] == "bias"), None),
            # where the time went, in epochs of CPU time: the pipeline's parts, with stage bn's
            # statistics pass and stage bias's early-stopping passes taken out of their stage
            "parts_in_epochs": _parts_in_epochs(report.to_dict(), epoch["cpu_seconds"])}


def _parts_in_epochs(report: dict, epoch_cpu: float) -> dict[str, float]:
    inner = {stage["stage"]: stage.get("seconds", {}) for stage in report["stages"]}
    parts = {}
    for part, spent in report["seconds"].items():
        parts[part] = spent["cpu"] - sum(within["cpu"] for within in inner.get(part, {}).values())
        parts.update({f"{part} {name}": within["cpu"] for name, within in inner.get(part, {}).items()})
    return {part: float(f"{cpu / epoch_cpu:.4g}") for part, cpu in parts.items()}  # 4 significant digits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="vgg-small")
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--calibration-size", type=int, default=5000,
                        help="held-apart images that judge (early stopping, the guard; default 5000)")
    parser.add_argument("--training-size", type=int,
                        help="training images the stages learn on (default: all, as parasnn calibrate)")
    parser.add_argument("--train-limit", type=int, help="time only this many training batches (scaled up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", help="a trained ANN checkpoint to calibrate (default: the seeded "
                                             "initialisation); parasnn ships src/parasnn/assets/"
                                             "fashion_mnist_vgg_small_qcfs.pt")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = calibration_cost(dataset=args.dataset, model_name=args.model, time_steps=args.time_steps,
                              calibration_size=args.calibration_size, train_limit=args.train_limit,
                              checkpoint=args.checkpoint, training_size=args.training_size)
    result["threads"] = args.threads
    print(json.dumps(result, indent=1))
    print(f"calibrate / one training epoch: {result['ratio_wall']} (wall), {result['ratio_cpu']} (CPU)"
          + (" — epoch extrapolated from a partial one" if result["epoch_extrapolated"] else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
