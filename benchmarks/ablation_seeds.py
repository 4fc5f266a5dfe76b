"""The calibration ablation ([STDC], Table 3 layout) repeated over seeds, with the mean,
the spread and the ordering the method promises: full ≥ each single stage ≥ baseline.

    python benchmarks/ablation_seeds.py runs/fmnist-vgg-small-relu/model.pt --seeds 0,1,2 \\
        --out runs/bench/ablation-relu

Each seed is one ``parasnn ablate CHECKPOINT --no-dagger --seed S`` (the seed orders the
batches of the two training stages; the calibration slice, its validation part and the test
set stay the same), written to ``OUT/seed-S/``; a seed whose ``ablation.json`` exists is not
run again. Writes ``OUT/seeds.json`` and ``OUT/seeds.md``.

How "≥" is judged. A single test-set accuracy on 10 000 images has a binomial standard
error of about 0.25 points at 93 %, but two configurations are evaluated on the *same*
images, so their difference is measured far more precisely: only the images on which they
disagree carry information (McNemar; :func:`parasnn.evaluation.ablation.paired_difference`). For each
comparison the table gives the mean difference over seeds ± its standard error, which adds
the test-set error of the paired difference (taken as fully correlated across seeds, since
the test images are the same: the root mean square of the per-seed errors) and the spread
over seeds (standard deviation / √seeds). A comparison holds when the mean difference is
≥ 0, is a *tie* when it is negative but within two standard errors, and fails otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from parasnn.evaluation.ablation import COMPARISONS, paired_difference

__all__ = ["summarise", "markdown", "main"]

COLUMNS = ("baseline", "spatial", "temporal", "full")


def summarise(reports: dict[int, dict]) -> dict:
    """``{seed: ablation.json}`` → per T: per variant the accuracies, mean, standard deviation;
    and per seed whether full ≥ spatial, temporal ≥ baseline held."""
    steps = sorted({c["time_steps"] for r in reports.values() for c in r["cells"]})
    summary = {"ann": next(iter(reports.values()))["ann"]["accuracy"], "seeds": sorted(reports), "rows": []}
    for t in steps:
        by_variant: dict[str, list[float]] = {v: [] for v in COLUMNS}
        losses: dict[str, list[float]] = {v: [] for v in COLUMNS}
        ordered = []
        for seed in sorted(reports):
            cells = {c["variant"]: c for c in reports[seed]["cells"] if c["time_steps"] == t and not c["da"]}
            for variant in COLUMNS:
                by_variant[variant].append(cells[variant]["accuracy"])
                losses[variant].append(cells[variant]["test_loss"])
            ordered.append(_ordered({v: c["accuracy"] for v, c in cells.items()}))
        means = {v: statistics.fmean(a) for v, a in by_variant.items()}
        mean_losses = {v: statistics.fmean(a) for v, a in losses.items()}
        summary["rows"].append({
            "time_steps": t,
            "accuracy": by_variant,
            "mean": means,
            "stdev": {v: statistics.stdev(a) if len(a) > 1 else 0.0 for v, a in by_variant.items()},
            "ordered_per_seed": ordered,
            "ordered_on_mean": _ordered(means),
            "test_loss": losses,
            "mean_test_loss": mean_losses,
            # Lower is better: the order on the negated losses.
            "loss_ordered_on_mean": _ordered({v: -loss for v, loss in mean_losses.items()}),
            "paired": _paired(reports, t),
        })
    return summary


def _paired(reports: dict[int, dict], time_steps: int) -> dict[str, dict] | None:
    """Per comparison of :data:`COMPARISONS`: the mean accuracy difference over seeds, its
    standard error (test images and seeds, see the module docstring) and the verdict."""
    result = {}
    for better, worse in COMPARISONS:
        deltas, errors = [], []
        for seed in sorted(reports):
            cells = {c["variant"]: c for c in reports[seed]["cells"] if c["time_steps"] == time_steps and not c["da"]}
            counts = cells[better].get("discordant", {}).get(worse)
            if counts is None:  # an ablation.json from before paired counts were recorded
                return None
            delta, error = paired_difference(counts, reports[seed]["ann"]["samples"])
            deltas.append(delta)
            errors.append(error)
        mean = statistics.fmean(deltas)
        test_error = math.sqrt(statistics.fmean(e * e for e in errors))
        seed_error = statistics.stdev(deltas) / math.sqrt(len(deltas)) if len(deltas) > 1 else 0.0
        error = math.hypot(test_error, seed_error)
        verdict = "holds" if mean >= 0 else ("tie" if mean >= -2 * error else "fails")
        result[f"{better}-{worse}"] = {"per_seed": deltas, "mean": mean, "standard_error": error,
                                       "test_error": test_error, "seed_error": seed_error, "verdict": verdict}
    return result


def paired_verdict(paired: dict[str, dict]) -> str:
    """``yes`` (every comparison holds), ``yes, within noise`` (the others are ties) or ``no``."""
    verdicts = {entry["verdict"] for entry in paired.values()}
    if "fails" in verdicts:
        return "no"
    return "yes, within noise" if "tie" in verdicts else "yes"


def _ordered(score: dict[str, float]) -> bool:
    """full ≥ each single stage ≥ baseline, for a score where higher is better."""
    return (score["full"] >= max(score["spatial"], score["temporal"])
            and min(score["spatial"], score["temporal"]) >= score["baseline"])


def markdown(summary: dict, *, title: str) -> str:
    ann = summary["ann"]
    lines = [f"### {title}", "",
             f"ANN {100 * ann:.2f}%. Mean ± standard deviation over seeds {summary['seeds']} (the seed orders the "
             "calibration batches); in brackets the loss of the mean against the ANN.", "",
             "| T | Baseline (FS-PC) | + Spatial (bn) | + Temporal (bias) | Full (bn+bias) "
             "| full ≥ each ≥ baseline, point estimates |",
             "|---:|---:|---:|---:|---:|:-:|"]
    for row in summary["rows"]:
        cells = [f"{100 * row['mean'][v]:.2f} ± {100 * row['stdev'][v]:.2f} ({100 * (row['mean'][v] - ann):+.2f})"
                 for v in COLUMNS]
        held = sum(row["ordered_per_seed"])
        verdict = f"mean: {'yes' if row['ordered_on_mean'] else 'no'}; seeds: {held}/{len(row['ordered_per_seed'])}"
        lines.append(f"| {row['time_steps']} | " + " | ".join(cells) + f" | {verdict} |")
    lines += ["", "Test cross-entropy (the loss the calibration minimises), mean over the seeds:", "",
              "| T | Baseline (FS-PC) | + Spatial (bn) | + Temporal (bias) | Full (bn+bias) | full ≤ each ≤ baseline |",
              "|---:|---:|---:|---:|---:|:-:|"]
    for row in summary["rows"]:
        cells = [f"{row['mean_test_loss'][v]:.4f}" for v in COLUMNS]
        lines.append(f"| {row['time_steps']} | " + " | ".join(cells)
                     + f" | {'yes' if row['loss_ordered_on_mean'] else 'no'} |")
    rows = [row for row in summary["rows"] if row.get("paired")]
    if rows:
        lines += ["", "Paired accuracy differences on the same test images (points, mean over seeds ± standard "
                  "error of test images and seeds; a negative difference within two errors is a tie):", "",
                  "| T | " + " | ".join(f"{a} − {b}" for a, b in COMPARISONS) + " | full ≥ each ≥ baseline, paired |",
                  "|---:|" + "---:|" * len(COMPARISONS) + ":-:|"]
        for row in rows:
            cells = []
            for better, worse in COMPARISONS:
                entry = row["paired"][f"{better}-{worse}"]
                mark = {"holds": "", "tie": " (tie)", "fails": " (**fails**)"}[entry["verdict"]]
                cells.append(f"{100 * entry['mean']:+.2f} ± {100 * entry['standard_error']:.2f}{mark}")
            lines.append(f"| {row['time_steps']} | " + " | ".join(cells) + f" | {paired_verdict(row['paired'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="ANN checkpoint (parasnn train's model.pt)")
    parser.add_argument("--seeds", default="0,1,2", help="default 0,1,2")
    parser.add_argument("--time-steps", default="2,4,8", help="default 2,4,8")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", help="table title (default: the checkpoint's run directory)")
    args, extra = parser.parse_known_args(argv)  # anything else goes to parasnn ablate
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        parser.error("--seeds: give at least one seed")
    reports = {}
    for seed in seeds:
        directory = args.out / f"seed-{seed}"
        result = directory / "ablation.json"
        if not result.is_file():
            command = [sys.executable, "-m", "parasnn.cli", "ablate", str(args.checkpoint), "--no-dagger",
                       "--seed", str(seed), "--time-steps", args.time_steps, "--out", str(directory), *extra]
            print("running " + shlex.join(command), file=sys.stderr, flush=True)
            subprocess.run(command, check=True)
        reports[seed] = json.loads(result.read_text())
    from parasnn.io.files import write_json, write_text
    summary = summarise(reports)
    summary["command"] = "python " + shlex.join(["benchmarks/ablation_seeds.py",
                                                 *(sys.argv[1:] if argv is None else argv)])
    title = args.title or f"Calibration ablation over seeds: {args.checkpoint.parent.name}"
    write_json(args.out / "seeds.json", summary)
    text = markdown(summary, title=title) + f"\nCommand: `{summary['command']}`.\n"
    write_text(args.out / "seeds.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
