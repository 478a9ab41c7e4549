"""Datasets by name, and the views the distiller trains on.

``load(name)`` returns a ``Dataset`` of uint8 RGB images held in memory
(train and test splits, labels, class count, resolution). Images stay uint8
all the way into the models: each model resizes and normalises for itself
(DESIGN.md §3), so this package never needs to know which teacher is used.
"""

from __future__ import annotations

from ega_tf.data.base import Dataset, Split, mask_labels
from ega_tf.data.sources import DATASETS, load

__all__ = ["DATASETS", "Dataset", "Split", "load", "mask_labels"]
