"""Datasets by name, their augmentation, and the views the distiller trains on.

- ``base.py``: ``Split`` (uint8 images + int64 labels, in memory or streamed),
  ``Dataset``, ``mask_labels``, ``hold_out`` (the validation split).
- ``sources.py``: the ``DATASETS`` registry and ``load(name)``: digits,
  cifar100, stl10, tiny_imagenet, folder:PATH.
- ``tiny_imagenet.py``: the TFDS builder for the published Tiny ImageNet zip.
- ``augment.py``: RandomCrop(padding) + flip, the teacher-view options.
- ``pipeline.py``: the tf.data streams for training and evaluation.

Images stay uint8 all the way into the models: each model resizes and
normalises for itself (docs/architecture.md), so this package never needs
to know which teacher is used.
"""

from __future__ import annotations

from ega_tf.core.errors import DatasetNotFoundError
from ega_tf.data.base import UNLABELED, Dataset, Split, hold_out, mask_labels
from ega_tf.data.sources import DATASETS, check_name, load

__all__ = ["DATASETS", "UNLABELED", "Dataset", "DatasetNotFoundError",
           "Split", "check_name", "hold_out", "load", "mask_labels"]
