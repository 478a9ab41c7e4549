"""Where images come from: the embedded ``digits`` set and TFDS builders.

``digits`` is scikit-learn's bundled copy of the UCI handwritten digits
(1,797 images of 8x8 pixels with 17 grey levels, 10 classes): it ships with
scikit-learn, so the whole pipeline runs with no download. Each image is
scaled to 0..255, resized bilinearly to 32x32 (the CIFAR resolution the
students are built for) and repeated over three channels. The split is fixed:
a stratified 75% / 25% split with seed 0 (1,347 train, 450 test images).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ega_tf.data.base import Dataset, Split
from ega_tf.registry import Registry

DATASETS: Registry = Registry("dataset")

DIGITS_SIZE = 32


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither prepared nor obtainable offline."""


@DATASETS.register("digits")
def load_digits(data_dir: Optional[str] = None, **_) -> Dataset:
    del data_dir  # bundled with scikit-learn
    import tensorflow as tf
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    raw = sk_digits()
    grey = raw.images.astype(np.float32) * (255.0 / 16.0)  # [N, 8, 8]
    big = tf.image.resize(grey[..., None], (DIGITS_SIZE, DIGITS_SIZE),
                          method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(big), 0, 255).astype(np.uint8), 3,
                       axis=-1)
    idx = np.arange(len(images))
    tr, te = train_test_split(idx, test_size=0.25, random_state=0,
                              stratify=raw.target)
    return Dataset("digits", 10, Split(images[tr], raw.target[tr]),
                   Split(images[te], raw.target[te]),
                   [str(i) for i in range(10)])


def _tfds_load(name, archive, data_dir, download, splits=("train", "test")):
    """Loads a TFDS image-classification dataset into memory.

    Prepares it from ``<data_dir>/downloads/manual/<archive>`` when that file
    is there (TFDS looks there before the network), downloads only when
    ``download`` is true, and otherwise stops with what to put where.
    """
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        manual = os.path.join(data_dir, "downloads", "manual")
        if not (os.path.exists(os.path.join(manual, archive)) or download):
            raise DatasetNotFoundError(
                f"Dataset {name!r} is not prepared in {data_dir} and this "
                f"run may not download it. Either put {archive} (from the "
                f"dataset's publisher) in {manual}/ and run again, or run "
                f"with --download on a machine with internet access, or copy "
                f"a prepared {os.path.join(data_dir, name)} from another "
                "machine. See BUILD.md, 'Datasets'.")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual))
    parts = {}
    for split in splits:
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        parts[split] = Split(arrays["image"].astype(np.uint8),
                             arrays["label"])
    names = builder.info.features["label"].names
    return Dataset(name, len(names), parts[splits[0]], parts[splits[1]],
                   list(names))


@DATASETS.register("cifar100")
def load_cifar100(data_dir=None, download=False, **_) -> Dataset:
    return _tfds_load("cifar100", "cifar-100-binary.tar.gz", data_dir,
                      download)


def load(name: str, data_dir: Optional[str] = None, download=False):
    """Loads dataset ``name`` (see ``DATASETS.names()``) into memory."""
    return DATASETS.get(name)(data_dir=data_dir, download=download)
