"""Speed and memory of the converted transformers against their ANNs, in one process
(issue 11 item 6; the CNN grid is benchmarks/speed.py):

* all-MiniLM-L6-v2 (the shipped pretrained weights), batches of real Rotten Tomatoes
  sentences; multi-basis neurons fitted on 64 other sentences;
* the small ViT of the zoo on Fashion-MNIST images (a trained checkpoint with
  ``--vit-checkpoint``, else fresh weights: speed does not depend on them), fitted on 256
  training images.

Engines per model and batch: the ANN, the parallel SNN at every T, the serial simulation at
every T (skipped, with the reason, where one run would exceed the cap). Ratios are paired
per round (:func:`parasnn.bench.measure.measure`): parallel / ANN and serial / parallel.

    python benchmarks/transformer_speed.py --out runs/bench/transformer-speed
    python benchmarks/transformer_speed.py --models vit-tiny --batch-sizes 1,128 --threads 1 --clock cpu
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

from parasnn.bench.measure import CLOCKS, machine_info, measure, parasnn_cases, write_report
from parasnn.conversion.stages import ConversionConfig, convert

MODELS = ("minilm", "vit-tiny")


def _minilm(batch_size: int, time_steps: tuple[int, ...], bases: int):
    from parasnn.datasets.text import rotten_tomatoes
    from parasnn.zoo.bert import load_minilm, tokenize

    model, tokenizer = load_minilm()
    splits = rotten_tomatoes(train_per_class=64, test_per_class=max(batch_size, 1), seed=0)
    calibration = [text for text, _ in random.Random(0).sample(splits.train, 64)]
    batches = [(tokenize(tokenizer, calibration[i:i + 16]),) for i in range(0, 64, 16)]
    network = convert(model, calibration_data=batches,
                      config=ConversionConfig(bases=bases, function_time_steps=time_steps))
    sentences = [text for text, _ in random.Random(1).sample(splits.test, batch_size)]
    inputs = tokenize(tokenizer, sentences)
    return model, network, inputs, {"model": "all-MiniLM-L6-v2", "batch_size": batch_size,
                                    "input_shape": list(inputs[0].shape[1:])}


def _vit(batch_size: int, time_steps: tuple[int, ...], bases: int, checkpoint: Path | None):
    from parasnn.datasets import load_dataset, sample_subset
    from parasnn.zoo.vit import vit_tiny

    if checkpoint is not None:
        from parasnn.io.checkpoint import load_ann
        model = load_ann(checkpoint)[0]
    else:
        torch.manual_seed(0)
        model = vit_tiny((1, 28, 28), 10)
    model.eval()
    splits = load_dataset("fashion-mnist")
    calibration = sample_subset(splits.train, 256, seed=0).tensors[0]
    network = convert(model, calibration_data=[(calibration[i:i + 64],) for i in range(0, 256, 64)],
                      config=ConversionConfig(bases=bases, function_time_steps=time_steps))
    images = sample_subset(splits.test, batch_size, seed=1).tensors[0]
    return model, network, (images,), {"model": "vit-tiny", "batch_size": batch_size, "input_shape": [1, 28, 28]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batch-sizes", default="1,32", help="sentences or images per batch (default 1,32)")
    parser.add_argument("--time-steps", default="2,4,8,16")
    parser.add_argument("--bases", type=int, default=4)
    parser.add_argument("--vit-checkpoint", type=Path, default=None, help="a trained vit-tiny model.pt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clock", choices=CLOCKS, default="wall")
    parser.add_argument("--cap-seconds", type=float, default=20.0, help="skip a serial run longer than this")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/transformer-speed"))
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    time_steps = tuple(int(t) for t in args.time_steps.split(","))
    torch.set_num_threads(args.threads)
    results = []
    for name in models:
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            print(f"{name}, batch {batch_size}: converting", flush=True)
            with torch.no_grad():
                built = (_minilm(batch_size, time_steps, args.bases) if name == "minilm"
                         else _vit(batch_size, time_steps, args.bases, args.vit_checkpoint))
            model, network, inputs, config = built
            cases = parasnn_cases(ann=model, network=network, inputs=inputs, time_steps=time_steps, trains=False)
            results.append(measure(cases, config=config, device="cpu",
                                   threads=args.threads, rounds=args.rounds, clock=args.clock,
                                   cap_seconds=args.cap_seconds, log=print))
    machine = machine_info("cpu", args.threads)
    paths = write_report(results, args.out, machine=machine, command="python " + " ".join(sys.argv),
                         notes=["Transformers: every GELU, softmax, layer norm and attention product spiking "
                                f"(multi-basis neurons, N = {args.bases}); the ANN is the network as trained."],
                         plots=False)
    print(Path(paths["markdown"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
