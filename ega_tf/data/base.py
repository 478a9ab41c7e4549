"""Dataset containers and label masking.

A ``Split`` is one split of a dataset: uint8 RGB images of one size and int64
labels, in a fixed order. The images are held either in memory (a numpy
array: ``digits`` and tests) or behind a reader that streams them through
``tf.data`` in that same order (TFDS builders, image folders), so a split of
any size can be trained on. The labels are always a numpy array: masking,
class counts and step counts never decode an image.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Tuple

import numpy as np

# The label of an example without one: the cross-entropy skips it, every
# method that needs no label distils on it (docs/methods.md).
UNLABELED = -1


class Split:
    """uint8 ``[H, W, 3]`` images and int64 labels in a fixed order.

    Pass ``images`` (uint8 ``[N, H, W, 3]``) to hold them in memory, or
    ``reader`` (a function returning a ``tf.data.Dataset`` of uint8 images in
    the order of ``labels``) plus ``image_size`` to stream them.
    """

    def __init__(self, images=None, labels=None, *,
                 reader: Optional[Callable] = None,
                 image_size: Optional[Tuple[int, int]] = None):
        if (images is None) == (reader is None):
            raise ValueError("Give a Split either images or a reader.")
        self.labels = np.asarray(labels, np.int64)
        self._images = None
        self._reader = reader
        if images is not None:
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.ndim != 4 or (
                    images.shape[-1] != 3):
                raise ValueError("images must be uint8 [N, H, W, 3]; got "
                                 f"{images.dtype} {images.shape}.")
            if len(images) != len(self.labels):
                raise ValueError(f"{len(images)} images but "
                                 f"{len(self.labels)} labels.")
            self._images = images
            image_size = images.shape[1:3]
        self.image_size = tuple(int(s) for s in image_size)

    def __len__(self):
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self._images is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded images."""
        h, w = self.image_size
        return len(self) * h * w * 3

    @property
    def num_labeled(self) -> int:
        return int((self.labels != UNLABELED).sum())

    @property
    def images(self) -> np.ndarray:
        """All images as one uint8 array (decodes a streamed split once and
        keeps it: mind the memory for large splits)."""
        if self._images is None:
            parts = [b.numpy() for b in self.image_dataset().batch(4096)]
            images = (np.concatenate(parts) if parts else np.zeros(
                (0, *self.image_size, 3), np.uint8))
            if len(images) != len(self):
                raise ValueError(f"The reader gave {len(images)} images for "
                                 f"{len(self)} labels.")
            self._images = images
        return self._images

    def image_dataset(self):
        """A ``tf.data.Dataset`` of the uint8 images, in order."""
        import tensorflow as tf
        if self._images is not None:
            return tf.data.Dataset.from_tensor_slices(self._images)
        return self._reader()

    def dataset(self):
        """A ``tf.data.Dataset`` of ``(image, label)``, in order."""
        import tensorflow as tf
        return tf.data.Dataset.zip(
            (self.image_dataset(), tf.data.Dataset.from_tensor_slices(
                self.labels)))

    def with_labels(self, labels) -> "Split":
        """The same images with other labels (e.g. masked)."""
        labels = np.asarray(labels, np.int64)
        if len(labels) != len(self):
            raise ValueError(f"{len(labels)} labels for {len(self)} images.")
        if self._images is not None:
            return Split(self._images, labels)
        return Split(labels=labels, reader=self._reader,
                     image_size=self.image_size)

    def subset(self, indices) -> "Split":
        """The examples at ``indices`` (increasing), in that order; a
        streamed split stays streamed (its reader skips the others)."""
        indices = np.asarray(indices, np.int64)
        if len(indices) and (np.any(np.diff(indices) <= 0) or indices[0] < 0
                             or indices[-1] >= len(self)):
            raise ValueError("subset takes increasing indices into the "
                             "split.")
        if self._images is not None:
            return Split(self._images[indices], self.labels[indices])
        keep = np.zeros(len(self), bool)
        keep[indices] = True
        reader = self._reader

        def kept():
            import tensorflow as tf
            mask = tf.constant(keep)
            return reader().enumerate().filter(
                lambda i, _: tf.gather(mask, i)).map(lambda _, x: x)
        return Split(labels=self.labels[indices], reader=kept,
                     image_size=self.image_size)

    def concatenate(self, other: "Split") -> "Split":
        """This split followed by ``other`` (same image size)."""
        if other.image_size != self.image_size:
            raise ValueError(f"Cannot join {self.image_size} images with "
                             f"{other.image_size} images.")
        return Split(
            labels=np.concatenate([self.labels, other.labels]),
            reader=lambda: self.image_dataset().concatenate(
                other.image_dataset()),
            image_size=self.image_size)


@dataclasses.dataclass
class Dataset:
    name: str
    num_classes: int
    train: Split
    test: Split
    class_names: Optional[List[str]] = None
    # Held out of the training split (``hold_out``), labels kept; None when
    # the run has no validation split.
    val: Optional[Split] = None
    # With ``val`` held out: the training split before it was, and the
    # positions there of ``train``'s examples (what is computed once for
    # all training images, e.g. a teacher store, serves every hold-out).
    full_train: Optional[Split] = None
    train_positions: Optional[np.ndarray] = None

    @property
    def image_size(self):
        return self.train.image_size

    def describe(self) -> str:
        h, w = self.image_size
        unlabeled = len(self.train) - self.train.num_labeled
        val = (f", validation {len(self.val)} (held out of train, labeled)"
               if self.val is not None else "")
        return (f"{self.name}: {self.num_classes} classes, {h}x{w} RGB, "
                f"train {len(self.train)} ({self.train.num_labeled} labeled,"
                f" {unlabeled} unlabeled){val}, test {len(self.test)}")


def mask_labels(labels, fraction, seed=0):
    """Keeps a stratified ``fraction`` of the labels, sets the rest to -1.

    Every class keeps ``round(fraction * n_class)`` labels, at least one, so
    no class is left without a labeled example. Labels that are already -1
    stay -1. The same seed gives the same subset.
    """
    if not 0.0 < fraction <= 1.0:
        from ega_tf.core.errors import UserError
        raise UserError(
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


def hold_out(labels, fraction, seed=0):
    """(train indices, validation indices), both increasing: a stratified
    ``fraction`` of each class's labeled examples held out for validation.

    Every class gives ``round(fraction * n_class)`` examples, at least one,
    and keeps at least one for training; unlabeled examples (-1) stay in
    training. The same seed gives the same split; the draw is independent
    of ``mask_labels``'s with the same seed.
    """
    from ega_tf.core.errors import UserError
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1); got "
                        f"{fraction}.")
    labels = np.asarray(labels, np.int64)
    everything = np.arange(len(labels))
    if fraction == 0.0:
        return everything, everything[:0]
    # A stream of its own: [seed, 1] never equals mask_labels's seed.
    rng = np.random.default_rng([seed, 1])
    held = []
    for c in np.unique(labels[labels != UNLABELED]):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise UserError(
                f"data.val_fraction={fraction}: class {c} has "
                f"{len(idx)} labeled training example, too few to hold one "
                "out for validation and train on another. Use "
                "--config.data.val_fraction=0.")
        take = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        held.append(rng.choice(idx, size=take, replace=False))
    val = np.sort(np.concatenate(held))
    return np.setdiff1d(everything, val), val
