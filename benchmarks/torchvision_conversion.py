"""torchvision's modern networks through the converter: vit_b_16, swin_t, efficientnet_b0,
mobilenet_v2 and mobilenet_v3_small, random weights (seeded), eval mode, small inputs.

Each is converted with fitted multi-basis neurons (``convert`` with calibration batches of
random images), then its parallel SNN runs at each T and is compared to the ANN's logits on
other random images: cosine (per image, mean) and relative error ‖SNN − ANN‖ / ‖ANN‖ (over
the batch). Prints a markdown table network × T.

    PYTHONPATH=src python benchmarks/torchvision_conversion.py            # all five, T = 8, 16
    PYTHONPATH=src python benchmarks/torchvision_conversion.py --networks swin_t --time-steps 4 8 16

Random weights are enough to test that conversion follows the ANN (issue 11); accuracy on
data needs trained weights, which would have to be downloaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import torch
from torch import nn

from parasnn import convert, parallel_forward
from parasnn.conversion.stages import ConversionConfig, ThresholdStatistic


@dataclasses.dataclass(frozen=True)
class Network:
    """One torchvision network at the smallest input that keeps it cheap."""

    name: str
    image_size: int
    options: tuple[tuple[str, object], ...] = ()  # keyword arguments of the torchvision builder

    def build(self, *, seed: int = 0, batchnorm_images: int = 8) -> nn.Module:
        """The network with seeded random weights, in eval mode, its BatchNorm statistics
        set on random images (see :func:`set_batchnorm_statistics`)."""
        from torchvision import models
        torch.manual_seed(seed)
        model = getattr(models, self.name)(weights=None, **dict(self.options))
        for layer in model.modules():  # torchvision's ViT starts its classifier at zero: every logit 0
            if isinstance(layer, nn.Linear) and not bool(layer.weight.any()):
                nn.init.normal_(layer.weight, std=0.02)
        images = torch.randn(batchnorm_images, 3, self.image_size, self.image_size)
        return set_batchnorm_statistics(model, images).eval()


def set_batchnorm_statistics(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running mean and variance to those of its inputs on ``images``
    (in place; no weight changes). A freshly initialised network in eval mode normalises
    with mean 0 and variance 1, which is not what its layers produce: its activations
    vanish (random mobilenet_v2's logits are ~1e-10) or explode through depth, and the
    comparison would say nothing. With the statistics of its own inputs, each BatchNorm
    normalises as it would in a trained network."""
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not batchnorms:
        return model
    for norm in batchnorms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the forward passes
    model.train()
    with torch.no_grad():
        model(images)
    return model


# vit_b_16 is built for 32×32 images (2×2 patches of 16 and the class token): the same 12
# layers, 768 wide, a 5-token sequence. swin_t at 64×64 has maps of 16, 8, 4 and 2: the
# first two need padding to the 7×7 window, the last two are smaller than it (no shift).
NETWORKS = {
    "vit_b_16": Network("vit_b_16", 32, (("image_size", 32),)),
    "swin_t": Network("swin_t", 64),
    "efficientnet_b0": Network("efficientnet_b0", 64),
    "mobilenet_v2": Network("mobilenet_v2", 64),
    "mobilenet_v3_small": Network("mobilenet_v3_small", 64),
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    network: str
    time_steps: int
    cosine: float  # mean over images of cos(SNN logits, ANN logits)
    relative_error: float  # ‖SNN − ANN‖ / ‖ANN‖ over the batch
    conversion_seconds: float
    simulation_seconds: float


def compare(ann_logits: torch.Tensor, snn_logits: torch.Tensor) -> tuple[float, float]:
    """(mean cosine per image, relative error over the batch) of SNN logits to the ANN's."""
    cosine = torch.nn.functional.cosine_similarity(snn_logits.flatten(1), ann_logits.flatten(1), dim=1)
    relative = (snn_logits - ann_logits).norm() / ann_logits.norm()
    return float(cosine.mean()), float(relative)


def run(network: Network, *, time_steps: tuple[int, ...], bases: int = 4, calibration_batches: int = 2,
        batch_size: int = 2, percentile: float = 100.0, seed: int = 0) -> list[Comparison]:
    """Convert ``network`` (seeded random weights and images) and compare at each T.

    ``percentile`` of the ReLU(6) thresholds: 100 (the maximum on the calibration images)
    by default, so that what remains is the SNN's coding error, which shrinks with T; the
    library's default 99.9 adds a clipping error that does not."""
    model = network.build(seed=seed)
    size = (batch_size, 3, network.image_size, network.image_size)
    calibration = [torch.randn(size) for _ in range(calibration_batches)]
    images = torch.randn(size)
    start = time.perf_counter()
    snn = convert(model, calibration_data=calibration,
                  config=ConversionConfig(bases=bases, function_time_steps=tuple(time_steps),
                                          threshold=ThresholdStatistic(percentile)))
    conversion = time.perf_counter() - start
    with torch.no_grad():
        ann = model(images)
        rows = []
        for steps in time_steps:
            start = time.perf_counter()
            out = parallel_forward(snn, images, time_steps=steps)
            cosine, relative = compare(ann, out)
            rows.append(Comparison(network.name, steps, cosine, relative, conversion, time.perf_counter() - start))
    return rows


def table(rows: list[Comparison]) -> str:
    lines = ["| network | T | cosine to ANN | relative error | conversion (s) | parallel SNN (s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.network} | {r.time_steps} | {r.cosine:.4f} | {r.relative_error:.4f} | "
              f"{r.conversion_seconds:.1f} | {r.simulation_seconds:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--time-steps", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--bases", type=int, default=4)
    parser.add_argument("--percentile", type=float, default=100.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # fits are cached: a private cache so the timings include fitting, as a first conversion does
    os.environ.setdefault("PARASNN_CACHE", tempfile.mkdtemp(prefix="parasnn-tv-cache-"))
    rows = []
    for name in args.networks:
        rows += run(NETWORKS[name], time_steps=tuple(args.time_steps), bases=args.bases, percentile=args.percentile)
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
