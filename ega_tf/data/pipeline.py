"""tf.data pipelines yielding the student's and the teacher's uint8 views.

Training examples are ``({"student": s, "teacher": t}, label)`` built by
``augment.make_views``; evaluation examples carry the plain image in both
places. The stream is:

    split (in memory, or decoded in parallel by TFDS) -> cache (decoded
    images, when they fit) -> shuffle -> views (parallel) -> batch -> prefetch

Randomness is stateless and seeded: a seed fixes the whole stream, and each
epoch draws fresh seeds. ``deterministic=False`` lets the parallel view map
hand out elements as they finish (faster on a busy machine; the same views,
in a less predictable order).
"""

from __future__ import annotations

import tensorflow as tf

from ega_tf.data import augment
from ega_tf.errors import UserError
from ega_tf.registry import check_choice

CACHE_POLICIES = ("auto", "memory", "none")
DEFAULT_SHUFFLE_BUFFER = 16384  # for streamed splits that are not cached
AUTOTUNE = tf.data.AUTOTUNE
GiB = 1 << 30


def check_cache_policy(cache):
    check_choice("input.cache", cache, CACHE_POLICIES)


def _cached(split, ds, cache, cache_limit_gb):
    """Caches the decoded images of a streamed split in memory, if asked to
    or (``auto``) if they take at most ``cache_limit_gb``."""
    check_cache_policy(cache)
    if split.in_memory or cache == "none":
        return ds, split.in_memory
    if cache == "memory" or split.nbytes <= cache_limit_gb * GiB:
        return ds.cache(), True
    return ds, False


def train_dataset(split, batch_size, *, seed=0, padding=None,
                  teacher_view="independent", deterministic=True,
                  cache="auto", cache_limit_gb=8.0, shuffle_buffer=None):
    """Shuffled, augmented, batched training stream (drops the last partial
    batch so every step has the same shape).

    ``padding=None`` scales the published 4 px with the resolution
    (``augment.default_padding``). ``shuffle_buffer=None`` shuffles over the
    whole split when it is in memory, else over ``DEFAULT_SHUFFLE_BUFFER``.
    """
    augment.check_teacher_view(teacher_view)
    if len(split) < batch_size:
        raise UserError(f"batch_size {batch_size} exceeds the {len(split)} "
                        "training images; lower --batch_size.")
    if padding is None:
        padding = augment.default_padding(split.image_size)

    def views(element, rnd):
        image, label = element
        seed_pair = tf.stack([rnd, tf.constant(seed, tf.int64)])
        return augment.make_views(image, seed_pair, padding,
                                  teacher_view), label

    ds, whole = _cached(split, split.dataset(), cache, cache_limit_gb)
    buffer = shuffle_buffer or (len(split) if whole else
                                min(len(split), DEFAULT_SHUFFLE_BUFFER))
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    rng = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, rng)).map(
        views, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(split, batch_size, *, cache="auto", cache_limit_gb=8.0,
                 **_):
    """The plain images for both models, in order."""
    ds, _ = _cached(split, split.dataset(), cache, cache_limit_gb)
    ds = ds.map(lambda x, y: ({"student": x, "teacher": x}, y))
    return ds.batch(batch_size).prefetch(AUTOTUNE)
