"""Your own images: ``folder:PATH`` with ``PATH/<split>/<class>/<image>``,
and images without a class in ``PATH/unlabeled/`` (any depth), which join
the training split with label -1.

The layout is TFDS ``ImageFolder``'s (a ``train`` split and a ``test``,
``val`` or ``validation`` split, one folder per class, class names sorted),
but the reader is written here because users' folders hold files TFDS
cannot leave out: a corrupt or truncated JPEG crashed the first epoch with a
decoder traceback naming no file. So every file is decoded once, in
parallel, when the dataset is loaded:

- unreadable files are skipped with one warning line (count and the first
  few paths), or refused with one error line (``on_bad_image="error"``);
- the decoded sizes give the default resolution: the median shorter side of
  the training images, capped at ``MAX_DEFAULT_SIZE`` (one huge or tiny
  photo does not decide it); the choice and the spread are logged;
- an empty class folder is reported; a single class is refused.

Training then streams the good files: decode, resize the shorter side to the
resolution (antialiased bilinear) and crop the centre square.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from absl import logging

from ega_tf.core.errors import DatasetNotFoundError, UserError
from ega_tf.core.registry import check_choice
from ega_tf.data.base import UNLABELED, Dataset, Split

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
UNLABELED_DIR = "unlabeled"
TEST_SPLITS = ("test", "val", "validation")
BAD_IMAGE_POLICIES = ("skip", "error")
MAX_DEFAULT_SIZE = 224
MIN_SIZE = 8
_SHOWN = 5  # bad files named in a message


def check_on_bad_image(policy):
    check_choice("data.on_bad_image", policy, BAD_IMAGE_POLICIES)


def _list_split(root, split, classes=None):
    """(classes, [(path, label)]) of ``root/split``, sorted."""
    directory = os.path.join(root, split)
    found = sorted(d for d in os.listdir(directory)
                   if os.path.isdir(os.path.join(directory, d)))
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{directory} has class folder(s) {unknown} that "
                        "train/ does not have; the classes come from train/.")
    files = []
    for label, name in enumerate(classes):
        folder = os.path.join(directory, name)
        if not os.path.isdir(folder):
            continue
        files += [(os.path.join(folder, f), label)
                  for f in sorted(os.listdir(folder))
                  if f.lower().endswith(EXTENSIONS)]
    return classes, files


def _list_unlabeled(root):
    """[(path, -1)] of every image under ``root/unlabeled/``, sorted (none
    when the folder does not exist)."""
    directory = os.path.join(root, UNLABELED_DIR)
    files = []
    for where, dirs, names in os.walk(directory):
        dirs.sort()
        files += [(os.path.join(where, f), UNLABELED) for f in sorted(names)
                  if f.lower().endswith(EXTENSIONS)]
    return files


def _decoded_size(path):
    """(height, width) of the image file, or None if it cannot be decoded
    completely."""
    import tensorflow as tf
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                   expand_animations=False)
        return tuple(int(s) for s in image.shape[:2])
    except (tf.errors.OpError, ValueError):
        return None


def _check_files(files, on_bad_image, what):
    """Decodes every file once; returns (good files, their sizes)."""
    with concurrent.futures.ThreadPoolExecutor(
            max(2, os.cpu_count() or 2)) as pool:
        sizes = list(pool.map(_decoded_size, [p for p, _ in files]))
    bad = [p for (p, _), s in zip(files, sizes) if s is None]
    if bad:
        listed = ", ".join(bad[:_SHOWN]) + (" ..." if len(bad) > _SHOWN
                                            else "")
        if on_bad_image == "error":
            raise UserError(
                f"{len(bad)} file(s) in {what} cannot be decoded as images: "
                f"{listed}. Remove or replace them, or run with "
                "--config.data.on_bad_image=skip to leave them out.")
        logging.warning("Skipping %d file(s) in %s that cannot be decoded "
                        "as images: %s", len(bad), what, listed)
    good = [(f, s) for f, s in zip(files, sizes) if s is not None]
    return [f for f, _ in good], [s for _, s in good]


def default_size(sizes, what):
    """The median shorter side of ``sizes``, capped; logs the spread."""
    shorter = np.array([min(s) for s in sizes])
    median = int(np.median(shorter))
    size = max(MIN_SIZE, min(median, MAX_DEFAULT_SIZE))
    lo, hi = np.percentile(shorter, [5, 95])
    note = ""
    if size != median:
        note = (f" (the median {median} is outside {MIN_SIZE}.."
                f"{MAX_DEFAULT_SIZE}; set --config.data.image_size to choose)")
    logging.info("%s: training at %dx%d px, the median shorter side of %d "
                 "images; shorter sides range %d-%d (5th-95th percentile "
                 "%d-%d)%s.", what, size, size, len(shorter), shorter.min(),
                 shorter.max(), lo, hi, note)
    return size


def _split(files, image_size):
    import tensorflow as tf

    from ega_tf.data.augment import resize_center_crop
    paths = [p for p, _ in files]
    labels = np.array([label for _, label in files], np.int64)

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                   expand_animations=False)
        return resize_center_crop(image, image_size)

    def reader():
        return tf.data.Dataset.from_tensor_slices(paths).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE)

    return Split(labels=labels, reader=reader,
                 image_size=(image_size, image_size))


def load_folder(path, image_size=None, on_bad_image="skip") -> Dataset:
    """The dataset of image folder ``path``; see the module docstring."""
    check_on_bad_image(on_bad_image)
    path = os.path.abspath(os.path.expanduser(path))
    layout = (f"{path}/train/<class>/<image>.png|jpg and {path}/test/<class>"
              f"/<image>.png|jpg (or val/), and optionally {path}/unlabeled/"
              "<image>.png|jpg")
    if not os.path.isdir(path):
        raise DatasetNotFoundError(f"Image folder {path!r} does not exist. "
                                   f"Expected {layout}.")
    tests = [s for s in TEST_SPLITS if os.path.isdir(os.path.join(path, s))]
    if not os.path.isdir(os.path.join(path, "train")) or not tests:
        present = sorted(d for d in os.listdir(path)
                         if os.path.isdir(os.path.join(path, d)))
        raise DatasetNotFoundError(
            f"Image folder {path!r} has {present or 'no folders'}; it needs "
            "train/ and one of test/, val/, validation/, each holding one "
            "folder of .png/.jpg/.jpeg images per class.")
    classes, train = _list_split(path, "train")
    name = os.path.basename(path)
    counts = np.bincount([label for _, label in train],
                         minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if len(classes) - len(empty) < 2:
        raise UserError(
            f"Image folder {path!r} has {len(classes) - len(empty)} class "
            "with training images; a classifier needs at least two: put each"
            f" class's images in its own folder under {path}/train/.")
    if empty:
        logging.warning("%s: class folder(s) %s hold no training image; "
                        "their classes cannot be learned.", name, empty)
    _, test = _list_split(path, tests[0], classes)
    train, sizes = _check_files(train, on_bad_image, f"{path}/train")
    unlabeled = _list_unlabeled(path)
    if unlabeled:
        unlabeled, more = _check_files(unlabeled, on_bad_image,
                                       f"{path}/{UNLABELED_DIR}")
        train, sizes = train + unlabeled, sizes + more
    logging.info("%s: %d labeled training images in %d classes, %d "
                 "unlabeled (%s/%s/)", name, len(train) - len(unlabeled),
                 len(classes), len(unlabeled), path, UNLABELED_DIR)
    test, _ = _check_files(test, on_bad_image, f"{path}/{tests[0]}")
    if image_size is None:
        image_size = default_size(sizes, name)
    return Dataset("folder:" + path, len(classes), _split(train, image_size),
                   _split(test, image_size), list(classes))

