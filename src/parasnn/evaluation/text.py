"""How well a sentence encoder — an ANN, or the spiking network converted from it — keeps the
ANN's embeddings and what they are good for.

An encoder is any callable ``encode(texts) -> (n, d)`` tensor (e.g.
:func:`parasnn.zoo.sentence_encoder`); :func:`encode_texts` runs it in batches without
gradients. Three measures:

* :func:`embedding_cosine` — row-wise cosine between the ANN's and another encoder's
  embeddings of the same texts: ``(mean, min)``; 1 means the direction is kept exactly.
* :func:`probe_accuracy` — a logistic-regression probe fitted on the ANN's embeddings of the
  training sentences (e.g. Rotten Tomatoes rotten/fresh), scored on any encoder's embeddings
  of the test sentences: does the converted network still carry the ANN's linear features?
* :func:`lee_pearson` — Pearson correlation between the pairwise cosine similarities of the 50
  Lee documents and the 1,225 human judgements (Lee, Pincombe & Welsh 2005).

The probe needs scikit-learn (``pip install 'parasnn[digits]'``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Encoder", "TextScores", "encode_texts", "embedding_cosine", "fit_probe", "probe_accuracy",
           "pairwise_cosine", "lee_pearson", "score_text_encoder"]

Encoder = Callable[[Sequence[str]], Tensor]


def encode_texts(encode: Encoder, texts: Sequence[str], *, batch_size: int = 64) -> Tensor:
    """``encode`` applied to ``texts`` in batches of ``batch_size``, without gradients:
    ``(len(texts), d)`` on the CPU."""
    if batch_size < 1:
        raise ValueError(f"encode_texts: batch_size must be >= 1, got {batch_size}")
    if not len(texts):
        raise ValueError("encode_texts: texts is empty")
    with torch.no_grad():
        parts = [encode(list(texts[start:start + batch_size])).detach().cpu() for start in range(0, len(texts), batch_size)]
    embeddings = torch.cat(parts)
    if embeddings.dim() != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(f"encode_texts: the encoder returned shape {tuple(embeddings.shape)} for "
                         f"{len(texts)} texts; expected (n, d)")
    return embeddings


def _matrix(name: str, values) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if array.ndim != 2 or not array.size:
        raise ValueError(f"{name} must be a non-empty (n, d) matrix, got shape {array.shape}")
    return array


def embedding_cosine(reference, other) -> tuple[float, float]:
    """Mean and minimum over rows of ``cos(reference[i], other[i])``; both ``(n, d)``
    (a zero row has cosine 0 with anything)."""
    reference, other = _matrix("reference", reference), _matrix("other", other)
    if reference.shape != other.shape:
        raise ValueError(f"embedding_cosine: reference {reference.shape} and other {other.shape} differ in shape")
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    cosines = np.divide((reference * other).sum(axis=1), norms, out=np.zeros(len(norms)), where=norms > 0)
    return float(cosines.mean()), float(cosines.min())


def fit_probe(train_embeddings, train_labels, *, regularization: float = 1.0):
    """A multinomial logistic regression (L2, inverse strength ``regularization`` = sklearn's
    ``C``, lbfgs: deterministic) fitted on ``(n, d)`` embeddings and ``(n,)`` integer labels."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as error:
        raise ImportError("the probe needs scikit-learn: pip install 'parasnn[digits]'") from error
    features = _matrix("train_embeddings", train_embeddings)
    labels = np.asarray(train_labels)
    if labels.shape != (len(features),):
        raise ValueError(f"train_labels has shape {labels.shape}, expected ({len(features)},)")
    return LogisticRegression(C=regularization, max_iter=5000).fit(features, labels)


def probe_accuracy(train_embeddings, train_labels, test_embeddings, test_labels, *,
                   regularization: float = 1.0) -> float:
    """Accuracy on ``test_embeddings`` of the probe :func:`fit_probe` fits on
    ``train_embeddings`` (the ANN's): the test embeddings may come from any encoder."""
    probe = fit_probe(train_embeddings, train_labels, regularization=regularization)
    features, labels = _matrix("test_embeddings", test_embeddings), np.asarray(test_labels)
    if labels.shape != (len(features),):
        raise ValueError(f"test_labels has shape {labels.shape}, expected ({len(features)},)")
    if features.shape[1] != probe.n_features_in_:
        raise ValueError(f"test_embeddings have {features.shape[1]} features, the probe was fitted on {probe.n_features_in_}")
    return float(np.mean(probe.predict(features) == labels))


def pairwise_cosine(embeddings) -> np.ndarray:
    """``(n, n)`` cosine similarities of the rows of ``(n, d)`` embeddings (zero rows give 0)."""
    array = _matrix("embeddings", embeddings)
    norms = np.linalg.norm(array, axis=1)
    unit = np.divide(array, norms[:, None], out=np.zeros_like(array), where=norms[:, None] > 0)
    return unit @ unit.T


def lee_pearson(embeddings, judgements) -> float:
    """Pearson's r between the cosine similarities of the documents' ``(n, d)`` embeddings and
    the ``(n, n)`` human ``judgements``, over the n(n−1)/2 pairs above the diagonal (1,225 for
    the 50 Lee documents)."""
    similarity = pairwise_cosine(embeddings)
    judgements = _matrix("judgements", judgements)
    if judgements.shape != similarity.shape:
        raise ValueError(f"lee_pearson: judgements {judgements.shape} do not match {len(similarity)} embeddings")
    rows, columns = np.triu_indices(len(similarity), k=1)
    predicted, human = similarity[rows, columns], judgements[rows, columns]
    if predicted.std() == 0 or human.std() == 0:
        raise ValueError("lee_pearson: constant similarities or judgements have no correlation")
    return float(np.corrcoef(predicted, human)[0, 1])


@dataclass(frozen=True)
class TextScores:
    """:func:`score_text_encoder`'s measures; ``cosine_*`` compare with the reference encoder
    over the test sentences and the Lee documents together."""

    cosine_mean: float
    cosine_min: float
    probe_accuracy: float
    lee_pearson: float


def score_text_encoder(encode: Encoder, *, reference: Encoder, train: Sequence[tuple[str, int]],
                       test: Sequence[tuple[str, int]], lee_documents: Sequence[str], lee_judgements,
                       batch_size: int = 64) -> TextScores:
    """All three measures for ``encode``; the probe is fitted on ``reference``'s (the ANN's)
    embeddings of ``train``. Pass ``reference=encode`` to score the ANN itself."""
    test_texts, test_labels = [text for text, _ in test], [label for _, label in test]
    texts = test_texts + list(lee_documents)
    embeddings = encode_texts(encode, texts, batch_size=batch_size)
    reference_embeddings = embeddings if reference is encode else encode_texts(reference, texts, batch_size=batch_size)
    train_embeddings = encode_texts(reference, [text for text, _ in train], batch_size=batch_size)
    mean, minimum = embedding_cosine(reference_embeddings, embeddings)
    return TextScores(
        cosine_mean=mean, cosine_min=minimum,
        probe_accuracy=probe_accuracy(train_embeddings, [label for _, label in train],
                                      embeddings[:len(test_texts)], test_labels),
        lee_pearson=lee_pearson(embeddings[len(test_texts):], lee_judgements))
