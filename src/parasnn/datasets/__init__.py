"""Data sets: one reader per format (:mod:`.idx` Fashion-MNIST, :mod:`.cifar`, :mod:`.digits`,
:mod:`.folder` image folders), what a data set is (:mod:`.info`), normalising and augmenting
(:mod:`.transforms`), splits, samples and loaders (:mod:`.splits`), batches (:mod:`.batches`)
and shipped slices (:mod:`.subset`). The public names are re-exported here."""
from .batches import inputs_and_labels, inputs_of
from .data import *  # noqa: F401,F403 - the public names, listed in data.__all__
from .data import __all__ as _data_names
from .load import checkpoint_dataset
from .splits import held_apart_sample, training_sample

__all__ = [*_data_names, "checkpoint_dataset", "held_apart_sample", "training_sample", "inputs_of",
           "inputs_and_labels"]
