"""Speed-up of ``parasnn evaluate`` and ``parasnn calibrate`` under torchrun: the same command on
the same data with 1 and with 2 processes, in one run, reported as a ratio.

    python benchmarks/distributed_speed.py --out runs/bench/distributed
    python benchmarks/distributed_speed.py --limit 2000 --training-size 2000 --processes 1,2 --repeats 2

Every process runs one torch thread (``OMP_NUM_THREADS=1``, what torchrun sets for several
processes), so the ratio is what splitting the data over processes buys, not a change in
intra-op threads. Two times per run: the command's own compute time (evaluate: the ANN pass
and every SNN pass from its ``--json`` report; calibrate: ``seconds`` in its config, all
stages) and the wall time of the whole ``torchrun`` command (start-up, reading the data,
converting, writing). The speed-up is ``time(1 process) / time(N processes)``; runs of the
two sizes alternate (``--repeats``) so that load from other jobs falls on both.

Data: the shipped Fashion-MNIST network (``src/parasnn/assets/fashion_mnist_vgg_small_qcfs.pt``)
on Fashion-MNIST (``/usr/share/datasets/fashion-mnist``, ``make data``) — ``--checkpoint`` and
``--data-dir`` for others (an image folder streams when large; docs/speed.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "src" / "parasnn" / "assets" / "fashion_mnist_vgg_small_qcfs.pt"


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--data-dir", help="the checkpoint's data set directory (default: as recorded)")
    parser.add_argument("--processes", type=_int_list, default=[1, 2], help="process counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per process count (default 1)")
    parser.add_argument("--limit", type=int, default=2000, help="evaluate: test images (default 2000)")
    parser.add_argument("--time-steps", type=int, default=4, help="T of evaluate and calibrate (default 4)")
    parser.add_argument("--training-size", type=int, default=2000, help="calibrate: training images (default 2000)")
    parser.add_argument("--calibration-size", type=int, default=1000,
                        help="calibrate: held-apart images (default 1000)")
    parser.add_argument("--skip-calibrate", action="store_true")
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/distributed"))
    return parser


def _torchrun(processes: int, arguments: list[str], *, cwd: Path) -> float:
    """Run ``parasnn ARGUMENTS`` under torchrun with ``processes`` processes; its wall time."""
    environment = dict(os.environ, PARASNN_PROGRESS="0", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                       PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "parasnn.cli", *arguments]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({completed.returncode}):\n"
                         f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    return seconds


def _evaluate(args, processes: int, work: Path) -> dict:
    report = work / f"evaluate-{processes}.json"
    report.unlink(missing_ok=True)
    arguments = ["evaluate", str(args.checkpoint), "--time-steps", str(args.time_steps), "--forms", "parallel",
                 "--limit", str(args.limit), "--batch-size", "128", "--json", str(report)]
    if args.data_dir:
        arguments += ["--data-dir", args.data_dir]
    wall = _torchrun(processes, arguments, cwd=work)
    data = json.loads(report.read_text())
    compute = data["ann"]["seconds"] + sum(result["seconds"] for result in data["snn"])
    return {"wall": wall, "compute": compute, "samples": data["ann"]["samples"],
            "accuracy": [result["accuracy"] for result in data["snn"]]}


def _calibrate(args, processes: int, work: Path) -> dict:
    out = work / f"calibrated-{processes}.pt"
    arguments = ["calibrate", str(args.checkpoint), "-T", str(args.time_steps), "--stages", "da,bn,bias",
                 "--training-size", str(args.training_size), "--calibration-size", str(args.calibration_size),
                 "--batch-size", "128", "--bn-epochs", "1", "--bias-epochs", "1", "--out", str(out)]
    if args.data_dir:
        arguments += ["--data-dir", args.data_dir]
    for stale in (out, out.with_name(out.stem + ".config.json")):
        stale.unlink(missing_ok=True)
    wall = _torchrun(processes, arguments, cwd=work)
    config = json.loads(out.with_name(out.stem + ".config.json").read_text())
    return {"wall": wall, "compute": config["seconds"], "processes": config["processes"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = [name for name, skip in (("evaluate", args.skip_evaluate), ("calibrate", args.skip_calibrate))
                if not skip]
    runs: dict[str, dict[int, list[dict]]] = {name: {n: [] for n in args.processes} for name in commands}
    with tempfile.TemporaryDirectory(prefix="parasnn-distributed-") as directory:
        work = Path(directory)
        for repeat in range(args.repeats):
            for name in commands:
                for processes in args.processes:
                    result = (_evaluate if name == "evaluate" else _calibrate)(args, processes, work)
                    runs[name][processes].append(result)
                    print(f"{name}, {processes} process(es), run {repeat + 1}: compute {result['compute']:.2f} s, "
                          f"wall {result['wall']:.2f} s", file=sys.stderr, flush=True)
    base = args.processes[0]
    lines = ["## torchrun: 1 against N processes", "",
             f"`{args.checkpoint.name}`, T = {args.time_steps}; evaluate: {args.limit} test images (parallel form); "
             f"calibrate: stages da,bn,bias (1 epoch each), {args.training_size} training + "
             f"{args.calibration_size} held-apart images. One torch thread per process; machine: "
             f"{os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at the end.", "",
             "| command | processes | compute s (median) | wall s (median) | speed-up compute | speed-up wall |",
             "|---|---:|---:|---:|---:|---:|"]
    summary = {}
    for name in commands:
        medians = {n: {key: statistics.median(r[key] for r in runs[name][n]) for key in ("compute", "wall")}
                   for n in args.processes}
        for n in args.processes:
            speedup = {key: medians[base][key] / medians[n][key] for key in ("compute", "wall")}
            summary.setdefault(name, {})[n] = {**medians[n], "speedup": speedup}
            lines.append(f"| {name} | {n} | {medians[n]['compute']:.2f} | {medians[n]['wall']:.2f} | "
                         f"{speedup['compute']:.2f} | {speedup['wall']:.2f} |")
    if "evaluate" in commands:  # the same answer whatever the number of processes
        accuracies = {n: runs["evaluate"][n][0]["accuracy"] for n in args.processes}
        lines += ["", "Evaluate accuracy per process count (must agree): " + ", ".join(
            f"{n}: {accuracies[n]}" for n in args.processes)]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.md").write_text(text + "\n")
    (args.out / "distributed.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
