"""Where images come from, by name (``--dataset=``).

- ``digits``: scikit-learn's bundled copy of the UCI handwritten digits
  (1,797 images of 8x8 pixels with 17 grey levels, 10 classes). It ships with
  scikit-learn, so everything runs with no download. Each image is scaled to
  0..255, resized bilinearly to 32x32 (the CIFAR resolution the students are
  built for) and repeated over three channels. The split is fixed: stratified
  75% / 25% with seed 0 (1,347 train, 450 test images). Held in memory.
- ``cifar100`` (TFDS, 32x32, 100 classes), ``stl10`` (TFDS, 96x96, 10
  classes; ``unlabeled_split=True`` adds its 100,000 ``unlabelled`` images to
  training with label -1) and ``tiny_imagenet`` (64x64, 200 classes; the
  builder in ``tiny_imagenet.py``; the test split is its labeled
  ``validation`` split). Streamed from TFDS's prepared files.
- ``folder:PATH``: your images in TFDS ``ImageFolder``'s layout,
  ``PATH/<split>/<class>/<image>``, read by ``folder.py`` (unreadable files
  found before training; the default size chosen from all the images).

A TFDS dataset that is not prepared is prepared from the files in
``<data_dir>/downloads/manual/``; without them (and without ``download``) the
loader stops with one message naming the file and the directory. TFDS writes
into a temporary directory and renames it when complete, so a failed
preparation leaves nothing that breaks the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import numpy as np

from ega_tf.core.errors import DatasetNotFoundError, UserError, first_line
from ega_tf.core.registry import Registry
from ega_tf.data.base import UNLABELED, Dataset, Split

DATASETS: Registry = Registry("dataset")

DIGITS_SIZE = 32
FOLDER_PREFIX = "folder:"


@DATASETS.register("digits")
def load_digits(image_size=None, unlabeled_split=False, **_) -> Dataset:
    """scikit-learn's 8x8 digits, grey repeated in three channels, resized
    (bilinear) to ``image_size`` (default 32, as the CIFAR networks take)."""
    _no_unlabeled_split("digits", unlabeled_split)
    size = DIGITS_SIZE if image_size is None else int(image_size)
    import tensorflow as tf
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    raw = sk_digits()
    grey = raw.images.astype(np.float32) * (255.0 / 16.0)  # [N, 8, 8]
    big = tf.image.resize(grey[..., None], (size, size),
                          method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(big), 0, 255).astype(np.uint8), 3,
                       axis=-1)
    idx = np.arange(len(images))
    tr, te = train_test_split(idx, test_size=0.25, random_state=0,
                              stratify=raw.target)
    return Dataset("digits", 10, Split(images[tr], raw.target[tr]),
                   Split(images[te], raw.target[te]),
                   [str(i) for i in range(10)])


def _no_unlabeled_split(name, unlabeled_split):
    if unlabeled_split:
        raise UserError(f"{name} has no unlabeled split; unlabeled_split "
                        "is for stl10. Use labeled_fraction to hide labels.")


def _default_data_dir(data_dir):
    return os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


class _NoVariantWarning:
    """Drops TFDS's warning that a dataset's folder holds no prepared
    version ("Variant folder ... has no dataset_info.json"): it comes
    whenever the dataset is absent, above the one line that says what to
    put where."""

    @staticmethod
    def filter(record):
        return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _without_tfds_variant_warning():
    logger = logging.getLogger("absl")
    logger.addFilter(_NoVariantWarning)
    try:
        yield
    finally:
        logger.removeFilter(_NoVariantWarning)


def _prepared_builder(name, archive, data_dir, download, downloadable=True):
    """The TFDS builder of ``name``, prepared (from the manual directory, or
    downloaded if allowed), or a DatasetNotFoundError saying what to do."""
    import tensorflow_datasets as tfds

    data_dir = _default_data_dir(data_dir)
    with _without_tfds_variant_warning():
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    if prepared:
        return builder
    manual = os.path.join(data_dir, "downloads", "manual")
    have = os.path.exists(os.path.join(manual, archive))
    if not have and not (download and downloadable):
        how = (" or run with --download on a machine with internet access,"
               if downloadable else "")
        raise DatasetNotFoundError(
            f"Dataset {name!r} is not prepared in {data_dir}. Put {archive} "
            f"(from the dataset's publisher) in {manual}/ and run again,{how}"
            f" or copy a prepared {os.path.join(data_dir, name)} from another"
            " machine. See BUILD.md, 'Datasets'.")
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except Exception as e:  # TFDS re-raises the generator's error as is
        raise UserError(
            f"Preparing {name!r} from {os.path.join(manual, archive)} failed"
            f": {first_line(e)}. Is the archive complete and the published "
            "one? Nothing was prepared; fix it and run again.") from None
    return builder


def _resized(ds, native, image_size):
    """Maps a stream of images to ``image_size`` if that differs."""
    from ega_tf.data.augment import resize_center_crop
    if image_size is None or tuple(native) == (image_size, image_size):
        return ds
    return ds.map(lambda x: resize_center_crop(x, image_size),
                  num_parallel_calls=-1)


def _tfds_split(builder, split, image_size=None,
                all_unlabeled=False) -> Split:
    """A streamed Split of TFDS ``split``: labels are read once with the
    images left undecoded; images are decoded in parallel when iterated."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def read(decoders=None):
        return builder.as_dataset(split=split, shuffle_files=False,
                                  decoders=decoders)

    known = _known_size(builder, split) if all_unlabeled else 0
    if known:
        labels = np.full(known, UNLABELED, np.int64)
    else:
        ds = read({"image": tfds.decode.SkipDecoding()})
        parts = [b for b in tfds.as_numpy(
            ds.map(lambda ex: ex["label"]).batch(65536))]
        labels = (np.concatenate(parts) if parts else np.zeros(0, np.int64))
        if all_unlabeled:
            labels = np.full(len(labels), UNLABELED, np.int64)
    native = builder.info.features["image"].shape[:2]
    size = (image_size, image_size) if image_size else tuple(native)

    def reader():
        ds = read().map(lambda ex: ex["image"], num_parallel_calls=-1)
        ds = _resized(ds, native, image_size)
        return ds.map(lambda x: tf.ensure_shape(x, (*size, 3)))

    return Split(labels=labels, reader=reader, image_size=size)


def _known_size(builder, split) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except Exception:  # splits unknown (e.g. under tfds.testing.mock_data)
        return 0


def _tfds_dataset(name, builder, train="train", test="test", image_size=None,
                  extra_train=None, class_names=None) -> Dataset:
    train_split = _tfds_split(builder, train, image_size)
    if extra_train:
        train_split = train_split.concatenate(_tfds_split(
            builder, extra_train, image_size, all_unlabeled=True))
    names = class_names or list(builder.info.features["label"].names)
    return Dataset(name, len(names), train_split,
                   _tfds_split(builder, test, image_size), names)


@DATASETS.register("cifar100")
def load_cifar100(data_dir=None, download=False, image_size=None,
                  unlabeled_split=False, **_) -> Dataset:
    _no_unlabeled_split("cifar100", unlabeled_split)
    builder = _prepared_builder("cifar100", "cifar-100-binary.tar.gz",
                                data_dir, download)
    return _tfds_dataset("cifar100", builder, image_size=image_size)


@DATASETS.register("stl10")
def load_stl10(data_dir=None, download=False, image_size=None,
               unlabeled_split=False, **_) -> Dataset:
    builder = _prepared_builder("stl10", "stl10_binary.tar.gz", data_dir,
                                download)
    return _tfds_dataset(
        "stl10", builder, image_size=image_size,
        extra_train="unlabelled" if unlabeled_split else None)


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(data_dir=None, download=False, image_size=None,
                       unlabeled_split=False, **_) -> Dataset:
    _no_unlabeled_split("tiny_imagenet", unlabeled_split)
    from ega_tf.data import tiny_imagenet  # registers the TFDS builder
    builder = _prepared_builder("tiny_imagenet", tiny_imagenet.ARCHIVE,
                                data_dir, download, downloadable=False)
    words = builder.info.metadata.get("words", {}) if (
        builder.info.metadata) else {}
    names = [f"{w}: {words[w]}" if w in words else w
             for w in builder.info.features["label"].names]
    return _tfds_dataset("tiny_imagenet", builder, test="validation",
                         image_size=image_size, class_names=names)


@DATASETS.register(FOLDER_PREFIX + "PATH")
def load_folder(path, image_size=None, unlabeled_split=False,
                on_bad_image="skip", **_) -> Dataset:
    """Images in ``PATH/<split>/<class>/<file>``, and unlabeled ones in
    ``PATH/unlabeled/`` (``folder.py``)."""
    if unlabeled_split:
        raise UserError("folder:PATH adds the images of PATH/unlabeled/ "
                        "whenever that folder exists; drop "
                        "--unlabeled_split.")
    from ega_tf.data import folder
    return folder.load_folder(path, image_size, on_bad_image)


def check_name(name: str) -> None:
    """Raises UserError unless ``name`` is a registered dataset or
    ``folder:`` followed by a path."""
    if name == FOLDER_PREFIX + "PATH" or name == FOLDER_PREFIX:
        raise UserError("Replace PATH in folder:PATH by your image folder.")
    if not name.startswith(FOLDER_PREFIX):
        DATASETS.get(name)


def load(name: str, data_dir: Optional[str] = None, download=False,
         image_size: Optional[int] = None, unlabeled_split=False,
         on_bad_image="skip") -> Dataset:
    """Dataset ``name`` (see ``DATASETS.names()``; ``folder:PATH`` for a
    local image folder), its splits streamed or in memory."""
    check_name(name)
    kwargs = dict(data_dir=data_dir, download=download,
                  image_size=image_size, unlabeled_split=unlabeled_split,
                  on_bad_image=on_bad_image)
    if name.startswith(FOLDER_PREFIX):
        return load_folder(name[len(FOLDER_PREFIX):], **kwargs)
    return DATASETS.get(name)(**kwargs)
