"""SimCLR's augmentation, run on device inside the training step.

Keras core preprocessing layers provide flip, colour jitter, grayscale and
blur, and sample them per image when they run inside the model; they are used
here for that reason (inside ``tf.data.map`` the same layers drew one decision
for a whole batch on this version). Keras has no random *resized* crop
(sample an area fraction and aspect ratio, crop, resize back), so
``RandomResizedCrop`` is written here on ``tf.image.crop_and_resize``, which
crops every image of the batch with its own box in one op.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="ega_tf")
class RandomResizedCrop(layers.Layer):
    """Crops a random box of ``scale`` area and ``ratio`` aspect per image,
    resizes it (bilinear) to the input size. Identity at inference."""

    def __init__(self, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.scale, self.ratio, self.seed = tuple(scale), tuple(ratio), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        batch = tf.shape(images)[0]
        size = tf.shape(images)[1:3]
        area = keras.random.uniform((batch,), *self.scale,
                                    seed=self.seed_generator)
        log_r = keras.random.uniform((batch,), math.log(self.ratio[0]),
                                     math.log(self.ratio[1]),
                                     seed=self.seed_generator)
        r = tf.exp(log_r)
        h = tf.minimum(tf.sqrt(area / r), 1.0)
        w = tf.minimum(tf.sqrt(area * r), 1.0)
        y0 = keras.random.uniform((batch,), seed=self.seed_generator) * (1 - h)
        x0 = keras.random.uniform((batch,), seed=self.seed_generator) * (1 - w)
        boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
        out = tf.image.crop_and_resize(tf.cast(images, "float32"), boxes,
                                       tf.range(batch), size)
        return tf.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale,
                "ratio": self.ratio, "seed": self.seed}


def simclr_augment(crop_scale=(0.2, 1.0), flip=True, jitter=0.4,
                   jitter_p=0.8, grayscale_p=0.2, blur=False, seed=None):
    """SimCLR's policy on float images in [0, 255] as a Sequential model.

    Colour jitter uses strength ``jitter`` for brightness, contrast and
    saturation and ``jitter / 4`` for hue, applied with probability
    ``jitter_p``; blur is off by default, as SimCLR does for 32-px images.
    """
    ops = [RandomResizedCrop(crop_scale, seed=seed)]
    if flip:
        ops.append(layers.RandomFlip("horizontal", seed=seed))
    if jitter:
        ops.append(RandomApply(layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=jitter,
            contrast_factor=jitter, saturation_factor=jitter,
            hue_factor=jitter / 4, seed=seed), jitter_p, seed=seed))
    if grayscale_p:
        ops.append(layers.RandomGrayscale(factor=grayscale_p, seed=seed))
    if blur:
        ops.append(layers.RandomGaussianBlur(factor=0.5, kernel_size=3,
                                             sigma=(0.1, 2.0),
                                             value_range=(0, 255), seed=seed))
    return keras.Sequential(ops, name="simclr_augment")


@keras.saving.register_keras_serializable(package="ega_tf")
class RandomApply(layers.Layer):
    """Applies ``layer`` to each image with probability ``p``."""

    def __init__(self, layer, p, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.layer, self.p, self.seed = layer, float(p), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        keep = keras.random.uniform((tf.shape(images)[0], 1, 1, 1),
                                    seed=self.seed_generator) < self.p
        return tf.where(keep, self.layer(images, training=True), images)
