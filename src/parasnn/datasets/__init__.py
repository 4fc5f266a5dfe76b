"""Data sets beyond images (the image data sets are in :mod:`parasnn.data`)."""
from parasnn.datasets.text import (RT_CLASSES, LeeCorpus, TextSplits, lee_corpus, package_file, rotten_tomatoes,
                                   rotten_tomatoes_reviews)

__all__ = ["RT_CLASSES", "TextSplits", "LeeCorpus", "package_file", "rotten_tomatoes_reviews",
           "rotten_tomatoes", "lee_corpus"]
