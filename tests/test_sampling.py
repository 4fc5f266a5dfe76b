"""Every sample drawn from data is a seeded random sample across classes (issue 14, item 0),
checked on an image folder of real handwritten digits, which is read class by class."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from parasnn.calibration.batches import split_batches
from parasnn.datasets import (first_examples, held_apart_sample, load_dataset, make_loader, sample_subset,
                              training_sample)

PER_CLASS = 12


@pytest.fixture(scope="module")
def sorted_folder(tmp_path_factory) -> Path:
    """``train/<digit>/*.png`` (PER_CLASS each) and ``test/<digit>/*.png`` (4 each) of sklearn's digits."""
    Image = pytest.importorskip("PIL.Image")
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    root = tmp_path_factory.mktemp("digits-folder")
    for digit in range(10):
        images = bunch.images[bunch.target == digit]
        for split, rows in (("train", images[:PER_CLASS]), ("test", images[PER_CLASS:PER_CLASS + 4])):
            directory = root / split / str(digit)
            directory.mkdir(parents=True)
            for index, image in enumerate(rows):
                Image.fromarray((image * 255 / 16).round().astype(np.uint8), mode="L").save(directory / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def splits(sorted_folder):
    return load_dataset("image-folder", data_dir=sorted_folder)


def _classes(dataset) -> set[int]:
    return set(dataset.tensors[1].tolist())


def test_the_folder_is_stored_class_by_class(splits):
    labels = splits.train.tensors[1]
    assert torch.equal(labels, labels.sort().values) and _classes(splits.train) == set(range(10))
    assert _classes(first_examples(splits.train, 24)) == {0, 1}  # why the first rows are no sample


@pytest.mark.parametrize("seed", range(4))
def test_samples_contain_every_class_and_depend_only_on_the_seed(splits, seed):
    sample = sample_subset(splits.train, 60, seed=seed)
    assert len(sample) == 60 and _classes(sample) == set(range(10))
    assert torch.equal(sample.tensors[1], sample_subset(splits.train, 60, seed=seed).tensors[1])
    # Images travel with their labels: every sampled row is a row of the data set.
    rows = {(tuple(x.flatten().tolist()), int(y)) for x, y in zip(*splits.train.tensors)}
    assert all((tuple(x.flatten().tolist()), int(y)) in rows for x, y in zip(*sample.tensors))
    # `--limit` on the test set, and the whole set in a random order (batches mix classes).
    assert _classes(sample_subset(splits.test, 20, seed=seed)) == set(range(10))
    everything = sample_subset(splits.train, None, seed=seed)
    assert sorted(everything.tensors[1].tolist()) == sorted(splits.train.tensors[1].tolist())
    first_batch = next(iter(make_loader(everything, batch_size=30, shuffle=False)))
    assert len(set(first_batch[1].tolist())) >= 5
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        sample_subset(splits.train, 0, seed=seed)


@pytest.mark.parametrize("seed", range(3))
def test_calibration_data_thresholds_and_validation_cover_every_class(splits, seed):
    config = {"holdout": 60, "seed": seed}
    held = held_apart_sample(splits.train, config=config, size=50, seed=seed)  # thresholds, guard, validation
    trained = training_sample(splits.train, config=config, size=None, seed=seed)  # what the stages learn on
    assert _classes(held) == set(range(10)) and _classes(trained) == set(range(10))
    assert len(held) == 50 and len(trained) == len(splits.train) - 60
    # Per class, the sample takes its share of the 60 held-apart images (within rounding).
    share = torch.bincount(held_apart_sample(splits.train, config=config, size=None).tensors[1], minlength=10) * 50 / 60
    assert ((torch.bincount(held.tensors[1], minlength=10) - share).abs() < 1).all()
    # One set of batches split by calibrate: the held-out batches are a random draw, so they are
    # no longer the last classes (as the last 20 % of batches of sorted data were).
    batches = list(make_loader(held, batch_size=5, shuffle=False))
    _, validation = split_batches(batches, validation_fraction=0.2, seed=seed)
    assert len(set(torch.cat([labels for _, labels in validation]).tolist())) >= 5


def test_a_stratified_sample_keeps_a_rare_class():
    labels = torch.cat([torch.zeros(95, dtype=torch.long), torch.ones(5, dtype=torch.long)])
    data = torch.utils.data.TensorDataset(torch.arange(100.0), labels)
    for seed in range(5):
        sample = sample_subset(data, 10, seed=seed)
        assert torch.bincount(sample.tensors[1]).tolist() == [9, 1]
        assert len(set(sample.tensors[0].tolist())) == 10
