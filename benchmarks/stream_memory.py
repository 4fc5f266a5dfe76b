"""Peak memory of the streamed image-folder reader against the folder's size.

    python benchmarks/stream_memory.py --sizes 10000,100000 --workers 2
    python benchmarks/stream_memory.py --sizes 10000,40000 --pixels 32 --calibrate da [--listed]

Generates (once, reused) folders of small random RGB PNGs under ``--root``
(``<root>/n<N>/train/<class>/<i>.png``, 10 classes, plus a 1 000-image test split), then,
for every size in a fresh process: builds :func:`parasnn.datasets.streaming.stream_image_folder`
(header scan + statistics pass) and reads one epoch of the training split through
:func:`parasnn.datasets.streaming.stream_loader` with ``--workers`` processes. Reports the
peak resident memory of the main process and of the largest worker (``getrusage``), and with
``--in-memory`` the same for the in-memory reader (``load_dataset("image-folder")``).

``--calibrate STAGES`` measures calibration instead of one epoch: a small ReLU/BatchNorm
network is calibrated (:func:`parasnn.calibration.pipeline.calibrate`, ``STAGES`` e.g. ``da``
or ``bn``; the ReLU thresholds are recorded first) learning on the *whole* training split as
:func:`parasnn.datasets.splits.batch_sequence` gives it — lazy batches
(:class:`parasnn.datasets.lazy.LazyBatches`), decoded when used — and judged on 256 test
images; with ``--listed`` also on the same batches held in a list (what calibration did before
the batches were lazy). Lazy, the peak should not grow with the folder; listed, it grows by
the decoded float32 images (``size × 3 × pixels² × 4`` bytes). With glibc's default
allocator the lazy peak still creeps up by tens of MiB per fourfold size: freed batch buffers
raise glibc's dynamic mmap threshold, later batches come from a heap that fragments; with
``--mmap-threshold 131072`` (sets ``MALLOC_MMAP_THRESHOLD_`` in the child: large buffers
always mapped and returned) the peak is flat, which shows no batch is kept (slower: a page
fault per fresh buffer).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES, TEST_SIZE = 10, 1000


def generate(root: Path, size: int, *, pixels: int, seed: int = 0) -> Path:
    """The folder for ``size`` training images (created on first use; a marker file says it is complete)."""
    from PIL import Image

    folder = root / f"n{size}_p{pixels}"
    if (folder / "complete").exists():
        return folder
    rng = np.random.default_rng(seed)
    for split, count in (("train", size), ("test", TEST_SIZE)):
        for c in range(CLASSES):
            (folder / split / f"class{c}").mkdir(parents=True, exist_ok=True)
        images = rng.integers(0, 256, (min(count, 1000), pixels, pixels, 3), dtype=np.uint8)
        for i in range(count):
            Image.fromarray(images[i % len(images)]).save(folder / split / f"class{i % CLASSES}" / f"{i:07d}.png")
    (folder / "complete").write_text("ok")
    return folder


def _current_rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or its peak so far (``VmHWM``), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(folder: Path, *, workers: int, batch_size: int, in_memory: bool) -> dict:
    """Run in a child process: build the reader, read one epoch, report peak RSS."""
    import torch

    from parasnn.datasets.data import load_dataset, make_loader
    from parasnn.datasets.streaming import stream_image_folder, stream_loader

    torch.set_num_threads(1)
    baseline = _current_rss_mib()  # the interpreter, torch and parasnn, before any data
    start = time.perf_counter()
    if in_memory:
        splits = load_dataset("image-folder", data_dir=folder)
        loader = make_loader(splits.train, batch_size=batch_size, shuffle=False)
    else:
        splits = stream_image_folder(folder, workers=workers)
        loader = stream_loader(splits.train, batch_size=batch_size, shuffle=False, workers=workers)
    built = time.perf_counter() - start
    peak_after_build = _current_rss_mib("VmHWM")
    seen = 0
    for images, _ in loader:
        seen += images.shape[0]
    del loader  # persistent workers end here, so RUSAGE_CHILDREN covers them
    import gc
    gc.collect()
    epoch = time.perf_counter() - start - built
    kib = 1024
    return {"images": seen, "build_seconds": round(built, 2), "epoch_seconds": round(epoch, 2),
            "baseline_mib": round(baseline, 1), "peak_after_build_mib": round(peak_after_build, 1),
            "main_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib, 1),
            "largest_worker_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib, 1)}


def measure_calibration(folder: Path, *, workers: int, batch_size: int, stages: str, listed: bool) -> dict:
    """Run in a child process: calibrate on every training image of ``folder``, report peak RSS."""
    import torch
    from torch import nn

    from parasnn.calibration.config import BatchNormConfig, CalibrationConfig
    from parasnn.calibration.pipeline import calibrate
    from parasnn.datasets.splits import batch_sequence, make_loader, sample_subset
    from parasnn.datasets.streaming import stream_image_folder

    torch.set_num_threads(1)
    baseline = _current_rss_mib()
    start = time.perf_counter()
    # Fixed statistics: the statistics pass is the reader's cost, measured above, not calibration's.
    splits = stream_image_folder(folder, workers=workers, statistics=((0.5,) * 3, (0.25,) * 3))
    held = list(make_loader(sample_subset(splits.test, 256, seed=1), batch_size=batch_size, shuffle=False,
                            workers=0))
    training = batch_sequence(sample_subset(splits.train, None, seed=0), batch_size=batch_size)
    kind = type(training).__name__
    if listed:
        training, kind = list(training), "list"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, CLASSES)).eval()
    config = CalibrationConfig(stages=stages, time_steps=2, batch_size=batch_size, validation_fraction=0.0,
                               bn=BatchNormConfig(epochs=1))
    calibrate(model, held, config=config, training_data=training)
    seconds = time.perf_counter() - start
    kib = 1024
    return {"images": len(splits.train), "batches": len(training), "training_data": kind,
            "seconds": round(seconds, 1), "baseline_mib": round(baseline, 1),
            "main_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib, 1),
            "largest_worker_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="training images per folder (default 10000,100000)")
    parser.add_argument("--pixels", type=int, default=16, help="image side in pixels (default 16)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--root", type=Path, default=Path("/tmp/parasnn_stream"))
    parser.add_argument("--in-memory", action="store_true", help="also measure the in-memory reader")
    parser.add_argument("--calibrate", metavar="STAGES",
                        help="measure calibration on lazy batches of the whole training split (e.g. da or bn)")
    parser.add_argument("--listed", action="store_true", help="with --calibrate: also on the same batches listed")
    parser.add_argument("--mmap-threshold", type=int, metavar="BYTES",
                        help="with --calibrate: MALLOC_MMAP_THRESHOLD_ of the child (a fixed glibc mmap threshold)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-in-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-listed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None and args.calibrate:
        print(json.dumps(measure_calibration(args.child, workers=args.workers, batch_size=args.batch_size,
                                             stages=args.calibrate, listed=args.child_listed)))
        return 0
    if args.child is not None:
        print(json.dumps(measure(args.child, workers=args.workers, batch_size=args.batch_size,
                                 in_memory=args.child_in_memory)))
        return 0
    if args.calibrate:
        return _calibration_table(args)
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        start = time.perf_counter()
        folder = generate(args.root, size, pixels=args.pixels)
        print(f"folder {folder} ready ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        for in_memory in ([False, True] if args.in_memory else [False]):
            command = [sys.executable, __file__, "--child", str(folder), "--workers", str(args.workers),
                       "--batch-size", str(args.batch_size)] + (["--child-in-memory"] if in_memory else [])
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            result.update(size=size, reader="in-memory" if in_memory else f"streamed ({args.workers} workers)")
            rows.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    print("Peak RSS of the main process, and above its RSS after importing torch and parasnn (baseline); "
          "a worker's peak counts the pages it shares with the main process (fork).\n")
    print("| reader | training images | main peak (MiB) | main peak − baseline (MiB) | largest worker peak (MiB) "
          "| build (s) | epoch (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        above = round(r["main_peak_mib"] - r.get("baseline_mib", float("nan")), 1)
        print(f"| {r['reader']} | {r['size']} | {r['main_peak_mib']} | {above} | {r['largest_worker_peak_mib']} | "
              f"{r['build_seconds']} | {r['epoch_seconds']} |")
    return 0


def _calibration_table(args) -> int:
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        folder = generate(args.root, size, pixels=args.pixels)
        for listed in ([False, True] if args.listed else [False]):
            command = [sys.executable, __file__, "--child", str(folder), "--workers", str(args.workers),
                       "--batch-size", str(args.batch_size), "--calibrate", args.calibrate] + \
                (["--child-listed"] if listed else [])
            environment = dict(os.environ)
            if args.mmap_threshold is not None:
                environment["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True,
                                               env=environment).stdout)
            result.update(size=size)
            rows.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    print(f"Calibration (stages {args.calibrate}, ReLU thresholds first) learning on every training image, "
          f"{args.pixels}×{args.pixels} RGB, batch {args.batch_size}, {args.workers} decoding workers, "
          f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'glibc default'}; peak RSS "
          "of the main process and above its RSS after importing torch and parasnn (baseline).\n")
    print("| training data | training images | batches | main peak (MiB) | main peak − baseline (MiB) "
          "| largest worker peak (MiB) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['training_data']} | {r['size']} | {r['batches']} | {r['main_peak_mib']} | "
              f"{round(r['main_peak_mib'] - r['baseline_mib'], 1)} | {r['largest_worker_peak_mib']} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
