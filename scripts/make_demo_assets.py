"""Build the files `parasnn demo` ships with: a trained checkpoint and a slice of the
Fashion-MNIST test set (100 images per class, the first of each class in test-set order).

    python scripts/make_demo_assets.py runs/fmnist-vgg-small-qcfs-l4/model.pt

The checkpoint must come from `parasnn train` (see README, "The embedded network"). The demo
also ships that network calibrated for T = 1 and T = 2, made afterwards with

    parasnn calibrate src/parasnn/assets/fashion_mnist_vgg_small_qcfs.pt -T 2 \
        --out src/parasnn/assets/fashion_mnist_vgg_small_qcfs_calibrated_t2.pt
    (and the same with -T 1 … _t1.pt; the defaults: every stage, learning on the whole
    training set, the 5 000 held-apart images judging)

Each calibrated checkpoint records that command in its config.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from parasnn.io.checkpoint import load_ann
from parasnn.cli import DEMO_CHECKPOINT, DEMO_TEST_SLICE
from parasnn.datasets.data import load_dataset, save_subset, to_uint8
from parasnn.io.files import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="model.pt written by parasnn train on Fashion-MNIST")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--data-dir", help="Fashion-MNIST directory (default: Debian's)")
    args = parser.parse_args()

    load_ann(args.checkpoint)  # refuse anything that is not a loadable ANN checkpoint
    with atomic_path(DEMO_CHECKPOINT) as temporary:
        temporary.write_bytes(args.checkpoint.read_bytes())

    splits = load_dataset("fashion-mnist", data_dir=args.data_dir)
    images, labels = splits.test.tensors
    labels = labels.numpy()
    chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[: args.per_class]
                                     for c in range(splits.info.num_classes)]))
    save_subset(DEMO_TEST_SLICE, "fashion-mnist", to_uint8(images[chosen], splits.info), labels[chosen],
                info=splits.info)
    print(f"wrote {DEMO_CHECKPOINT} ({DEMO_CHECKPOINT.stat().st_size / 1e6:.2f} MB) and "
          f"{DEMO_TEST_SLICE} ({len(chosen)} images, {DEMO_TEST_SLICE.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
