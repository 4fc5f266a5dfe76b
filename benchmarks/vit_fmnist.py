"""vit-tiny on Fashion-MNIST: the ANN against its spiking network (every GELU, softmax, layer
norm and attention product spiking, multi-basis neurons fitted training-free), at several T.

    python benchmarks/vit_fmnist.py                                  # train if absent, full test set
    python benchmarks/vit_fmnist.py --limit 2000 --serial-limit 500  # quicker: seeded random subsets

Steps, each the project's own command (so the table is what a user gets):

1. ``parasnn train --model vit-tiny --optimizer adamw --lr 2e-3 --weight-decay 0.05 --epochs 25
   --out RUN`` unless ``RUN/model.pt`` exists (about 20-35 min on one CPU thread);
2. ``parasnn convert RUN/model.pt --function-time-steps T… --out RUN/snn.pt`` unless it exists
   (fits cached under ``$PARASNN_CACHE``);
3. ``parasnn evaluate RUN/model.pt --snn RUN/snn.pt -T T… --forms parallel [--limit N]``, and
   with ``--serial-limit M`` the serial form at ``--serial-time-steps`` on M images.

Prints a Markdown table T × {accuracy, Δ vs ANN, spikes per image, energy / ANN, time} and
writes it with the raw reports to ``RUN/vit_fmnist.md`` and ``RUN/vit_fmnist.json``.
``--limit`` draws a seeded random sample across classes (the same images for every run).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from parasnn.io.files import write_json, write_text

__all__ = ["TRAIN_RECIPE", "markdown", "main"]

# The recipe measured for the README: AdamW with decoupled weight decay, linear warm-up
# (one epoch, at most 200 steps) and cosine decay, batch 128, random shifts and mirroring.
TRAIN_RECIPE = ("--optimizer", "adamw", "--lr", "2e-3", "--weight-decay", "0.05", "--epochs", "25")


def _parasnn(*arguments: str, threads: int) -> None:
    command = [sys.executable, "-m", "parasnn.cli", *arguments]
    print("$ " + shlex.join(["parasnn", *arguments]), file=sys.stderr, flush=True)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=environment)


def _spikes(row: dict) -> float:
    """Spikes per image, all neuron layers, summed over T."""
    return sum(layer["spikes"] for layer in row["activity"]["neurons"]) if row.get("activity") else float("nan")


def _energy(row: dict) -> float:
    activity = row.get("activity")
    return activity["snn_energy_pj"] / max(activity["ann_energy_pj"], 1e-12) if activity else float("nan")


def markdown(reports: list[dict], *, title: str) -> str:
    """One table from ``parasnn evaluate --json`` reports (ANN row from the first)."""
    first = reports[0]
    ann = first["ann"]
    lines = [f"### {title}", "",
             "| network | form | T | images | accuracy (%) | Δ vs ANN (points) | spikes per image | energy / ANN | "
             "time (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| ANN | – | – | {ann['samples']} | {100 * ann['accuracy']:.2f} | – | – | 1.000 | {ann['seconds']:.1f} |"]
    for report in reports:
        reference = report["ann"]["accuracy"]
        for row in report["snn"]:
            lines.append(f"| SNN | {row['form']} | {row['time_steps']} | {row['samples']} | "
                         f"{100 * row['accuracy']:.2f} | {100 * (row['accuracy'] - reference):+.2f} | "
                         f"{_spikes(row):,.0f} | {_energy(row):.3f} | {row['seconds']:.1f} |")
    lines += ["", "Δ against the ANN on the same images (a serial row on a subset is compared with the ANN on "
              "that subset). Time: the network runs only, one CPU thread unless said otherwise."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/fmnist-vit-tiny"), help="run directory (default runs/fmnist-vit-tiny)")
    parser.add_argument("--time-steps", default="2,4,8,16", help="T values of the parallel form (default 2,4,8,16)")
    parser.add_argument("--limit", type=int, help="test images of the parallel rows (default: all 10 000)")
    parser.add_argument("--serial-limit", type=int, help="also the serial form, on this many test images")
    parser.add_argument("--serial-time-steps", default="8", help="T values of the serial rows (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of each command (default 1)")
    parser.add_argument("--device", default="cpu", help="device of the evaluation (default cpu)")
    args = parser.parse_args(argv)
    run, threads = args.run, args.threads
    if not (run / "model.pt").exists():
        _parasnn("train", "--model", "vit-tiny", "--dataset", "fashion-mnist", *TRAIN_RECIPE, "--out", str(run),
                 threads=threads)
    steps = sorted((set(args.time_steps.split(",")) | set(args.serial_time_steps.split(","))) - {""}, key=int)
    snn = run / "snn.pt"
    if not snn.exists():
        _parasnn("convert", str(run / "model.pt"), "--function-time-steps", ",".join(steps), "--out", str(snn),
                 threads=threads)
    reports = []
    evaluations = [("parallel", args.time_steps, args.limit)]
    if args.serial_limit:
        evaluations.append(("serial", args.serial_time_steps, args.serial_limit))
    for form, time_steps, limit in evaluations:
        path = run / f"vit_fmnist_{form}.json"
        _parasnn("evaluate", str(run / "model.pt"), "--snn", str(snn), "-T", time_steps, "--forms", form,
                 "--device", args.device, *(["--limit", str(limit)] if limit else []), "--json", str(path),
                 threads=threads)
        reports.append(json.loads(path.read_text()))
    table = markdown(reports, title="vit-tiny on Fashion-MNIST: ANN vs spiking network (multi-basis neurons, N = 4)")
    print(table)
    write_text(run / "vit_fmnist.md", table + "\n")
    write_json(run / "vit_fmnist.json", {"reports": reports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
