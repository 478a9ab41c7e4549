"""The published augmentation: RandomCrop with zero padding + horizontal flip.

Each view is one image, cropped and flipped with ``tf.image``'s stateless ops
from its own seed, so a seed fixes the view whether the op runs eagerly or
inside ``tf.data.Dataset.map``. Written with ``tf.image`` rather than Keras's
``RandomCrop`` / ``RandomFlip`` layers because the published policy pads
before cropping (those layers do not pad) and samples every image
independently (inside ``tf.data.map`` the Keras layers drew one decision per
batch when this was checked, see ``ega_tf/ssl/augment.py``).

Views stay uint8: a model resizes and normalises its own input
(docs/architecture.md, "Data flow").
"""

from __future__ import annotations

import tensorflow as tf

from ega_tf.core.registry import check_choice

TEACHER_VIEWS = ("independent", "same", "clean")
_PADDING_AT_32 = 4  # the published CIFAR policy


def check_teacher_view(teacher_view):
    check_choice("teacher_view", teacher_view, TEACHER_VIEWS)


def default_padding(image_size) -> int:
    """The CIFAR padding (4 px at 32 px) scaled with the resolution: 8 at
    64 px (Tiny ImageNet), 12 at 96 px (STL-10)."""
    return int(round(_PADDING_AT_32 * min(image_size) / 32))


def padding_for(image_size, padding=None):
    """``padding`` as given, or (None) the default for ``image_size``."""
    return default_padding(image_size) if padding is None else int(padding)


def pad_crop_flip(image, padding, seed):
    """Zero-pads by ``padding``, crops back to size at random, flips at random.

    ``image`` is one [H, W, C] image; ``seed`` a shape-[2] int tensor.
    """
    shape = tf.shape(image)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if padding:
        image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(image, shape, seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seeds[1])


def make_views(image, seed, padding, teacher_view="independent"):
    """The student's and the teacher's views of one image, as a dict.

    ``independent``: two crops/flips from independent seeds (the published
    recipe);
    ``same``: the teacher sees the student's view; ``clean``: the teacher
    sees the image as it is.
    """
    check_teacher_view(teacher_view)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    student = pad_crop_flip(image, padding, seeds[0])
    if teacher_view == "independent":
        teacher = pad_crop_flip(image, padding, seeds[1])
    elif teacher_view == "same":
        teacher = student
    else:
        teacher = image
    return {"student": student, "teacher": teacher}


def resize_center_crop(image, size):
    """Resizes the shorter side to ``size`` (antialiased bilinear) and crops
    the centre ``size`` x ``size``, back to uint8: how an image folder of any
    sizes becomes one resolution without distorting aspect ratios."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    out = tf.image.resize(image, new, method="bilinear", antialias=True)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    out = out[top:top + size, left:left + size]
    out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
    return tf.ensure_shape(out, (size, size, 3))


# ------------------------------------------------------------ stored views
# A stored teacher view (``--config.teacher_views``) is one pad-crop-flip
# given by its parameters (row offset, column offset, flip) into the padded
# image, so that the teacher's store can keep them beside the features and
# the student can be shown the very view the teacher saw.
ALL_VIEWS = "all"


def view_table(padding):
    """Every view of the pad-crop-flip with ``padding``, as int16 rows
    (dy, dx, flip) in a fixed order: (2p + 1)^2 offsets x 2 flips (162 at
    the published 4 px)."""
    import numpy as np
    span = np.arange(2 * padding + 1, dtype=np.int16)
    dy, dx, flip = np.meshgrid(span, span, np.arange(2, dtype=np.int16),
                               indexing="ij")
    return np.stack([dy.ravel(), dx.ravel(), flip.ravel()], -1)


def _mix64(x):
    """SplitMix64's finaliser, elementwise on uint64 (wrapping)."""
    import numpy as np
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def drawn_views(first, count, views, padding, seed=0):
    """The stored views of images ``first .. first + count - 1``: int16
    [count, M, 3] rows of ``view_table``. ``views == "all"`` gives every
    view in table order; a number M draws M different views per image, as
    a pure function of (seed, image, view) (a SplitMix64 hash ranks the
    table per image; numpy's generators do not promise the same stream
    across versions, and a store must not depend on the numpy installed)."""
    import numpy as np
    table = view_table(padding)
    if views == ALL_VIEWS:
        return np.broadcast_to(table, (count, *table.shape)).copy()
    views = int(views)
    if not 1 <= views <= len(table):
        raise ValueError(f"{views} views of {len(table)}.")
    image = np.arange(first, first + count, dtype=np.uint64)[:, None]
    view = np.arange(len(table), dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = _mix64(_mix64(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
                     ^ _mix64(image * np.uint64(0x100000001B3) + view))
    order = np.argsort(key, axis=1, kind="stable")[:, :views]
    return table[order]


def apply_view(image, params, padding):
    """The view of one [H, W, C] image given by ``params`` (dy, dx, flip):
    zero-padded by ``padding``, cropped at (dy, dx) to the image's size,
    flipped left-right when ``flip`` is 1. A view drawn by
    ``pad_crop_flip`` is one of these."""
    shape = tf.shape(image)
    params = tf.cast(params, tf.int32)
    if padding:
        image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.slice(image, [params[0], params[1], 0], shape)
    return tf.cond(params[2] > 0, lambda: tf.reverse(image, [1]),
                   lambda: image)
