"""Everything ``make bench`` produces, into one directory:

    OUT/speed/        speed.json, speed.md, PNG plots       (benchmarks/speed.py)
    OUT/speed-keep-memory/   the same with glibc malloc keeping freed memory
    OUT/accuracy/     accuracy.json, accuracy.md            (benchmarks/accuracy_table.py)
    OUT/spikingjelly/ accuracy.json, accuracy.md            SpikingJelly's converter against
                                                            parasnn's serial SNN (the check)
    OUT/ablation-relu/, OUT/ablation-qcfs-l4/   seeds.md, seeds.json, seed-S/ (parasnn ablate
                                                per seed, with plots)   (benchmarks/ablation_seeds.py)
    OUT/ablation-relu-dagger/, ...-qcfs-l4-dagger/   parasnn ablate with the † rows (seed 0)
    OUT/pmsm-init/    init-table.md, init-table.json        PMSM initialisations (parasnn pmsm --compare)
    OUT/calibration-cost.json   parasnn calibrate (all stages) against one training epoch
                                (benchmarks/calibration_cost.py): the QCFS VGG, and the ReLU
                                ResNet-20 when trained (calibration-cost-resnet20.json)
    OUT/transformer-speed/      speed.md, speed.json: MiniLM and the ViT, parallel / ANN and serial /
                                parallel (benchmarks/transformer_speed.py)
    OUT/stream-memory.md        peak memory of the streamed image folder, 10 000 vs 100 000
                                images (benchmarks/stream_memory.py)
    OUT/distributed/  distributed.md, distributed.json      parasnn evaluate / calibrate under
                                torchrun, 1 against 2 processes (benchmarks/distributed_speed.py)

then the generated part of docs/results.md is rewritten when it has the markers
(benchmarks/update_readme.py; the README links to it). Missing Fashion-MNIST backbones are trained first
(``parasnn train``, resumable; ``--no-train`` skips them instead).

    python benchmarks/run_all.py --out runs/bench
    python benchmarks/run_all.py --out /tmp/bench --quick     # a few minutes: small grid
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ablation_seeds  # noqa: E402
import accuracy_table  # noqa: E402
import calibration_cost  # noqa: E402
import speed  # noqa: E402
import update_readme  # noqa: E402
from parasnn.bench.measure import CLOCKS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--quick", action="store_true",
                        help="small grid: vgg-small and resnet20, batch 1 and 32, T = 1, 4, 16, 64, 3 rounds; "
                             "accuracy on 1000 test images")
    parser.add_argument("--threads", type=int, help="torch threads for the speed benchmark (default: all)")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="speed benchmark clock: wall (default) or cpu (process CPU time, for a shared machine; "
                             "use with --threads 1)")
    parser.add_argument("--no-train", action="store_true", help="do not train missing backbones")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true", help="skip the ablations and the PMSM table")
    parser.add_argument("--skip-calibration-cost", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true", help="skip MiniLM's and the ViT's speed")
    parser.add_argument("--skip-stream", action="store_true", help="skip the streamed image-folder memory check")
    parser.add_argument("--skip-distributed", action="store_true",
                        help="skip parasnn evaluate / calibrate under torchrun with 1 and 2 processes")
    parser.add_argument("--results", "--readme", dest="results", type=Path, default=Path("docs/results.md"),
                        help="Markdown file whose generated part is rewritten (default docs/results.md)")
    args = parser.parse_args(argv)

    threads = (["--threads", str(args.threads)] if args.threads else []) + ["--clock", args.clock]
    if not args.skip_speed:
        grid = ["--models", "vgg-small,resnet20", "--batch-sizes", "1,32", "--batch-sizes-for", "vgg-small=1,8,32",
                "--time-steps", "1,4,16,64", "--rounds", "3"] if args.quick else []
        speed.main(grid + threads + ["--out", str(args.out / "speed")])
        # Again with glibc keeping freed memory (process-wide and irreversible, so second):
        # separates the parallel network's own cost from the allocator's page faults.
        speed.main(grid + threads + ["--keep-freed-memory", "--out", str(args.out / "speed-keep-memory")])
    if not args.skip_accuracy:
        limit = ["--limit", "1000"] if args.quick else []
        train = [] if args.no_train else ["--train"]
        accuracy_table.main(limit + train + ["--out", str(args.out / "accuracy")])
        # The SpikingJelly check: its converter as shipped, and what each correction restores.
        accuracy_table.main(["--backbones", "vgg-small-qcfs-l4,vgg-small-relu",
                             "--methods", "qcfs-serial,sj-default,sj-half-start,sj-qcfs-theta,sj-corrected",
                             "--limit", "1000" if args.quick else "2000", "--time-steps", "1,2,4,8",
                             "--title", "### The SpikingJelly check: its converter as shipped, and with each correction",
                             "--out", str(args.out / "spikingjelly")])
    includes = [args.out / "spikingjelly" / "accuracy.md"]
    if not args.skip_ablation:
        from parasnn.cli import main as parasnn
        quick = ["--limit", "1000", "--calibration-size", "1000"] if args.quick else []
        # Five seeds for the ReLU network: at T = 8 its calibrated variants lie within 0.1 points.
        for name, backbone, steps, seeds in (("relu", "vgg-small-relu", "2,4,8", "0,1,2,3,4"),
                                             ("qcfs-l4", "vgg-small-qcfs-l4", "2,4", "0,1,2")):
            seeds = "0" if args.quick else seeds
            checkpoint = accuracy_table.BACKBONES[backbone].checkpoint
            if not checkpoint.is_file():
                print(f"{checkpoint} missing: ablation {name} skipped", file=sys.stderr)
                continue
            out = args.out / f"ablation-{name}"
            ablation_seeds.main([str(checkpoint), "--seeds", seeds, "--time-steps", steps, "--out", str(out),
                                 "--title", f"Calibration ablation, {checkpoint.parent.name}", "--plots", *quick])
            includes.append(out / "seeds.md")
            # The paper's layout with the † rows (seed 0), as `parasnn ablate` prints it.
            dagger = args.out / f"ablation-{name}-dagger"
            parasnn(["ablate", str(checkpoint), "--time-steps", steps, "--out", str(dagger), *quick])
            includes.append(dagger / "ablation.md")
        full_precision = Path("runs/fmnist-vgg-small-signed/model.pt")
        if full_precision.is_file():
            table = args.out / "pmsm-init" / "init-table.md"
            parasnn(["pmsm", str(full_precision), "--compare", "entropy,percentile,range", "--levels", "1,4",
                     "--json", str(table.with_suffix(".json")), "--markdown", str(table),
                     *(["--max-batches", "50"] if args.quick else [])])
            includes.append(table)
    if not args.skip_calibration_cost:
        trained = accuracy_table.BACKBONES["vgg-small-qcfs-l4"].checkpoint
        checkpoint = trained if trained.is_file() else Path(__file__).resolve().parents[1] / "src" / "parasnn" / \
            "assets" / "fashion_mnist_vgg_small_qcfs.pt"
        quick = (["--train-limit", "20", "--calibration-size", "1000", "--training-size", "4096"] if args.quick
                 else ["--train-limit", "60"])
        costs = [("calibration-cost.json", ["--checkpoint", str(checkpoint)])]
        residual = accuracy_table.BACKBONES["resnet20-relu"].checkpoint
        if residual.is_file():  # the residual network costs more per image than the VGG
            costs.append(("calibration-cost-resnet20.json", ["--model", "resnet20", "--checkpoint", str(residual)]))
        args.out.mkdir(parents=True, exist_ok=True)
        for name, cost in costs:
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                calibration_cost.main(cost + quick)
            (args.out / name).write_text(buffer.getvalue())
    if not args.skip_transformers:
        import transformer_speed
        out = args.out / "transformer-speed"
        vit = Path("runs/fmnist-vit-tiny/model.pt")
        transformer_speed.main(threads + ["--out", str(out)] + (["--vit-checkpoint", str(vit)] if vit.is_file() else [])
                               + (["--models", "vit-tiny", "--time-steps", "2,8"] if args.quick else []))
        includes.append(out / "speed.md")
    if not args.skip_stream:
        import stream_memory
        sizes = "1000,10000" if args.quick else "10000,100000"
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            stream_memory.main(["--sizes", sizes])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stream-memory.md").write_text(buffer.getvalue())
    if not args.skip_distributed:
        import distributed_speed
        sizes = ["--limit", "1000", "--training-size", "1000", "--calibration-size", "500"] if args.quick else \
            ["--limit", "10000", "--training-size", "5000", "--calibration-size", "2000", "--repeats", "2"]
        distributed_speed.main(sizes + ["--out", str(args.out / "distributed")])
        includes.append(args.out / "distributed" / "distributed.md")
    # The figures docs/results.md shows: time and memory against T, and what calibration does to
    # the distributions ([STDC] Figures 1 and 4).
    figures = [args.out / "speed-keep-memory" / f"{name}-vs-T.png" for name in ("vgg-small-b1", "vgg16-b128")]
    figures += [args.out / "ablation-relu" / "seed-0" / f"distributions_T{t}.png" for t in (2, 4)]
    figures += [args.out / "ablation-qcfs-l4" / "seed-0" / "distributions_T2.png"]
    results = args.results
    if results.is_file() and update_readme.START in results.read_text():
        update_readme.main(["--accuracy", str(args.out / "accuracy" / "accuracy.json"),
                            "--speed", str(args.out / "speed" / "speed.json"),
                            "--speed", str(args.out / "speed-keep-memory" / "speed.json"), "--results", str(results),
                            *[f"--include={path}" for path in includes if path.is_file()],
                            *[f"--figure={path}" for path in figures if path.is_file()]])
    else:
        print(f"{results} has no {update_readme.START} marker: generated results not written "
              "(add the markers, or run benchmarks/update_readme.py --append)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
