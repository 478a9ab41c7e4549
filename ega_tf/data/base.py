"""In-memory dataset containers and label masking."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np

UNLABELED = -1  # label of an example that only EGA may use


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N], UNLABELED where the label is hidden

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or (
                self.images.shape[-1] != 3):
            raise ValueError("images must be uint8 [N, H, W, 3]; got "
                             f"{self.images.dtype} {self.images.shape}.")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but "
                             f"{len(self.labels)} labels.")
        self.labels = np.asarray(self.labels, np.int64)

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    name: str
    num_classes: int
    train: Split
    test: Split
    class_names: Optional[List[str]] = None

    @property
    def image_size(self):
        return tuple(self.train.images.shape[1:3])

    def describe(self) -> str:
        h, w = self.image_size
        labeled = int((self.train.labels != UNLABELED).sum())
        return (f"{self.name}: {self.num_classes} classes, {h}x{w} RGB, "
                f"train {len(self.train)} ({labeled} labeled), "
                f"test {len(self.test)}")


def mask_labels(labels, fraction, seed=0):
    """Keeps a stratified ``fraction`` of the labels, sets the rest to -1.

    Every class keeps ``round(fraction * n_class)`` labels, at least one, so
    no class is left without a labeled example. The same seed gives the same
    subset.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"labeled_fraction must be in (0, 1], got {fraction}.")
    labels = np.asarray(labels, np.int64)
    if fraction == 1.0:
        return labels.copy()
    rng = np.random.default_rng(seed)
    out = np.full_like(labels, UNLABELED)
    for c in np.unique(labels[labels != UNLABELED]):
        idx = np.flatnonzero(labels == c)
        keep = max(1, int(round(fraction * len(idx))))
        chosen = rng.choice(idx, size=keep, replace=False)
        out[chosen] = c
    return out
