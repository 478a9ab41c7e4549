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
