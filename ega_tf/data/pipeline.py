"""tf.data pipelines yielding the student's and the teacher's uint8 views.

Training examples are ``({"student": s, "teacher": t}, label)``: two
independently sampled RandomCrop(padding) + horizontal-flip views of the same
image (DESIGN.md §2), or, with ``teacher_view``, the same view (``"same"``) or
the plain image (``"clean"``) for the teacher. Evaluation examples carry the
plain image in both places. Randomness is stateless and seeded, so a seed
fixes the whole stream; a fresh stream of seeds is drawn every epoch.

Written with ``tf.image``'s stateless ops rather than Keras's ``RandomCrop``
layer because the published policy pads before cropping and samples every
image independently, which that layer does not do.
"""

from __future__ import annotations

import tensorflow as tf

from ega_tf.registry import check_choice

TEACHER_VIEWS = ("independent", "same", "clean")
AUTOTUNE = tf.data.AUTOTUNE


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


def _options(deterministic):
    opts = tf.data.Options()
    opts.deterministic = deterministic
    return opts


def train_dataset(split, batch_size, seed=0, padding=4,
                  teacher_view="independent", deterministic=True):
    """Shuffled, augmented, batched training stream (drops the last partial
    batch so every step has the same shape)."""
    check_choice("teacher_view", teacher_view, TEACHER_VIEWS)
    if len(split) < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(split)} "
                         "training images; lower --batch_size.")

    def views(element, rnd):
        image, label = element
        seeds = tf.random.experimental.stateless_split(
            tf.stack([rnd, tf.constant(seed, tf.int64)]), 2)
        student = pad_crop_flip(image, padding, seeds[0])
        teacher = {"independent": lambda: pad_crop_flip(image, padding,
                                                        seeds[1]),
                   "same": lambda: student,
                   "clean": lambda: image}[teacher_view]()
        return {"student": student, "teacher": teacher}, label

    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    rng = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, rng)).map(views, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
    return ds.with_options(_options(deterministic))


def eval_dataset(split, batch_size):
    """The plain images for both models, in order."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = ds.map(lambda x, y: ({"student": x, "teacher": x}, y))
    return ds.batch(batch_size).prefetch(AUTOTUNE)
