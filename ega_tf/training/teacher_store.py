"""Stored teacher views (``--config.teacher_views=M``): the frozen teacher's
features of M augmented views of every training image, computed once and
read by every run that needs them.

A store holds, for a training split of N images,

    views.npy      int16 [N, M, 3]   each view's (dy, dx, flip)
                                      (``data.augment.drawn_views``)
    features.npy   [N, M, F]          the teacher's features of that view
    meta.json      what it was computed from

in ``<store dir>/<key>/``, where the key is a SHA-256 of the teacher file's
SHA-256 (with its precision and BatchNorm folding), the split's images, the
image size, the padding, M and the storage dtype: any run, of any method,
seed or student, with those reads the same store, so a compare grid
computes it once. The views are drawn from the image's index alone (not the
run's seed); which of its M views an example reads at a step is drawn from
the run's per-epoch seed (``data.pipeline``).

A store is built in ``<key>.partial/`` in chunks of images: each chunk's
features are written into the memory-mapped array and flushed, then the
count of finished images is recorded (atomically), so a killed build
resumes at its last finished chunk; the directory is renamed into place
when every image is done, and a lock file keeps two processes from
building the same store at once. Training reads ``features.npy``
memory-mapped: the data set's size, not RAM, bounds a store.

float32 by default: the stored features are then the ones the teacher's
forward gives (docs/speed.md, "Stored teacher views", measures float16's
rounding of them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time

import numpy as np
from absl import logging

from ega_tf.core.errors import UserError
from ega_tf.core.io_utils import atomic_output

VERSION = 1
DTYPES = ("float32", "float16")
FEATURES, VIEWS, META, PROGRESS = ("features.npy", "views.npy", "meta.json",
                                   "progress.json")


def default_dir():
    """``$XDG_CACHE_HOME/ega_tf/teacher_store`` (``~/.cache`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.expanduser(os.path.join(cache, "ega_tf", "teacher_store"))


def parse_views(value, padding=None):
    """``teacher_views`` as 0, a positive int or ``"all"``; with
    ``padding``, checked against the number of views there are."""
    from ega_tf.data import augment
    text = str(value).strip().lower()
    if text == augment.ALL_VIEWS:
        return augment.ALL_VIEWS
    try:
        views = int(text)
    except ValueError:
        views = -1
    if views < 0:
        raise UserError(f"teacher_views={value!r}: give 0 (the teacher "
                        "sees a fresh view every step), a number of views "
                        "to store per image, or 'all'.")
    if padding is not None and views:
        total = len(augment.view_table(padding))
        if views > total:
            raise UserError(
                f"teacher_views={views}: the crop with {padding}-px padding "
                f"and the flip have {total} views; use --config."
                f"teacher_views=all to store every one.")
    return views


def images_sha256(split):
    """SHA-256 of the split's images, in order (shape included)."""
    h = hashlib.sha256(repr((len(split), split.image_size)).encode())
    if split.in_memory:
        h.update(np.ascontiguousarray(split.images).tobytes())
    else:
        for batch in split.image_dataset().batch(1024):
            h.update(np.ascontiguousarray(batch.numpy()).tobytes())
    return h.hexdigest()


def describe(teacher_sha, images_sha, image_size, padding, views, dtype):
    """What a store is computed from: its key's contents."""
    return {"version": VERSION, "teacher": teacher_sha, "images": images_sha,
            "image_size": list(image_size), "padding": int(padding),
            "views": views, "dtype": dtype}


def key_of(meta):
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()
                          ).hexdigest()[:32]


class Store:
    """A finished store, read-only: ``views`` [N, M, 3] in memory,
    ``features`` [N, M, F] memory-mapped."""

    def __init__(self, path):
        self.path = path
        self.built_seconds = None  # set when this process built it
        with open(os.path.join(path, META)) as f:
            self.meta = json.load(f)
        self.views = np.load(os.path.join(path, VIEWS))
        self.features = np.load(os.path.join(path, FEATURES), mmap_mode="r")
        self.num_views = self.views.shape[1]
        self.width = self.features.shape[-1]

    def __len__(self):
        return len(self.views)

    def rows(self, rows):
        """float32 features of flat rows (image * M + view)."""
        flat = self.features.reshape(-1, self.width)
        return np.asarray(flat[np.asarray(rows)], np.float32)

    @property
    def nbytes(self):
        return self.features.nbytes + self.views.nbytes

    def record(self):
        """What a run's results.json says about the store it read."""
        return {"path": self.path, "views": self.num_views,
                "dtype": str(self.features.dtype),
                "built_by_this_run": self.built_seconds is not None,
                **({"build_seconds": round(self.built_seconds, 1)}
                   if self.built_seconds is not None else {})}


@contextlib.contextmanager
def _lock(path):
    """An exclusive lock on ``path`` (a file), held while the block runs."""
    import fcntl
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _views_of(padding):
    """A compiled function: (images [c, H, W, 3], params [c, M, 3]) -> the
    c * M views, image-major."""
    import tensorflow as tf
    from ega_tf.data import augment

    def one(args):
        image, params = args
        return tf.map_fn(lambda p: augment.apply_view(image, p, padding),
                         params, fn_output_signature=image.dtype)

    @tf.function(autograph=False)
    def views(images, params):
        out = tf.map_fn(one, (images, params),
                        fn_output_signature=tf.TensorSpec(
                            [None, *images.shape[1:]], images.dtype))
        return tf.reshape(out, [-1, *images.shape[1:]])
    return views


def _chunks(split, start, size):
    """(first index, uint8 images) of the split from ``start`` on."""
    if split.in_memory:
        images = split.images
        for first in range(start, len(split), size):
            yield first, images[first:first + size]
        return
    first = start
    for batch in split.image_dataset().skip(start).batch(size):
        yield first, batch.numpy()
        first += len(batch)


def build(path, meta, teacher, split, *, batch_size=256, chunk_images=None,
          verbose=1, stop_after=None):
    """Computes the store ``meta`` describes into ``path`` (resuming a
    partial build there), ``batch_size`` views per teacher forward (a run
    passes its ``eval_batch_size``). Returns its seconds; with
    ``stop_after``, stops once at least that many images are done and
    returns None (the partial build is resumed by the next call)."""
    import keras
    import tensorflow as tf
    from ega_tf.data import augment
    n, views, padding = len(split), meta["views"], meta["padding"]
    m = len(augment.view_table(padding)) if views == augment.ALL_VIEWS \
        else int(views)
    chunk = chunk_images or max(1, batch_size // m) * 8
    partial = path + ".partial"
    os.makedirs(partial, exist_ok=True)
    progress_file = os.path.join(partial, PROGRESS)
    done = 0
    if os.path.exists(progress_file):
        with open(progress_file) as f:
            record = json.load(f)
        done = record["done"] if record["meta"] == meta else 0
    forward = tf.function(lambda x: teacher(x, training=False),
                          autograph=False)
    make_views = _views_of(padding)
    width = int(teacher.output_shape[-1])
    feature_file = os.path.join(partial, FEATURES)
    mode = "r+" if done else "w+"
    features = np.lib.format.open_memmap(
        feature_file, mode=mode, dtype=meta["dtype"], shape=(n, m, width))
    params = np.lib.format.open_memmap(
        os.path.join(partial, VIEWS), mode=mode, dtype=np.int16,
        shape=(n, m, 3))
    bar = keras.utils.Progbar(n * m, verbose=1 if verbose == 1 else 0,
                              unit_name="view")
    bar.update(done * m)
    if done:
        logging.info("Teacher store: resuming the build at image %d of %d.",
                     done, n)
    begin = time.time()
    for first, images in _chunks(split, done, chunk):
        count = len(images)
        params[first:first + count] = augment.drawn_views(
            first, count, views, padding)
        all_views = make_views(tf.constant(images),
                               tf.constant(params[first:first + count]))
        out = [forward(all_views[i:i + batch_size]).numpy()
               for i in range(0, count * m, batch_size)]
        features[first:first + count] = np.concatenate(out).reshape(
            count, m, width).astype(meta["dtype"])
        features.flush()
        params.flush()
        done = first + count
        with atomic_output(progress_file) as tmp:
            with open(tmp, "w") as f:
                json.dump({"meta": meta, "done": done}, f)
        bar.update(done * m)
        if stop_after is not None and done >= stop_after and done < n:
            return None
    del features, params
    with open(os.path.join(partial, META), "w") as f:
        json.dump({**meta, "num_images": n, "num_views": m, "width": width,
                   "seconds": round(time.time() - begin, 1)}, f, indent=1)
    os.remove(progress_file)
    os.replace(partial, path)
    return time.time() - begin


def open_or_build(root, meta, teacher, split, verbose=1, **kwargs):
    """The store ``meta`` describes under ``root``: read if it is there,
    else built (or its killed build resumed) first. Logs which."""
    root = os.path.abspath(os.path.expanduser(root or default_dir()))
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot create the teacher store directory {root} "
                        f"({e.strerror}); set --config.teacher_store_dir to "
                        "a writable directory.") from None
    path = os.path.join(root, key_of(meta))
    seconds, built = None, False
    with _lock(path + ".lock"):
        if not os.path.isdir(path):
            built = True
            logging.info("Teacher store: computing the teacher's features "
                         "of %s views of each of the %d training images "
                         "into %s.", meta["views"], len(split), path)
            seconds = build(path, meta, teacher, split, verbose=verbose,
                            **kwargs)
            if seconds is None:
                return None
            logging.info("Teacher store built in %.1f s: %s.", seconds, path)
        else:
            logging.info("Teacher store read from %s (built before).", path)
    store = Store(path)
    store.built_seconds = seconds if built else None
    if len(store) != len(split):
        raise UserError(f"The teacher store {path} holds {len(store)} "
                        f"images, the training split {len(split)}; remove "
                        "that directory and run again.")
    logging.info("Teacher store: %d images x %d views x %d features, "
                 "%.1f MiB (%s, memory-mapped).", len(store), store.num_views,
                 store.width, store.nbytes / 2**20, meta["dtype"])
    return store
