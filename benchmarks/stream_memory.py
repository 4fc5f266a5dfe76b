"""Peak memory of the streamed image-folder reader against the folder's size.

    python benchmarks/stream_memory.py --sizes 10000,100000 --workers 2

Generates (once, reused) folders of small random RGB PNGs under ``--root``
(``<root>/n<N>/train/<class>/<i>.png``, 10 classes, plus a 1 000-image test split), then,
for every size in a fresh process: builds :func:`parasnn.datasets.streaming.stream_image_folder`
(header scan + statistics pass) and reads one epoch of the training split through
:func:`parasnn.datasets.streaming.stream_loader` with ``--workers`` processes. Reports the
peak resident memory of the main process and of the largest worker (``getrusage``), and with
``--in-memory`` the same for the in-memory reader (``load_dataset("image-folder")``).
"""
from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="training images per folder (default 10000,100000)")
    parser.add_argument("--pixels", type=int, default=16, help="image side in pixels (default 16)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--root", type=Path, default=Path("/tmp/parasnn_stream"))
    parser.add_argument("--in-memory", action="store_true", help="also measure the in-memory reader")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, workers=args.workers, batch_size=args.batch_size,
                                 in_memory=args.child_in_memory)))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
