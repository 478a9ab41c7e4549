"""The preprocessing a teacher carries inside its file.

A teacher takes uint8 images, as the input pipeline yields them, and turns
them into what its checkpoint family was trained on, on the accelerator. The
settings use timm's ``PretrainedCfg`` vocabulary:

``input_size``
    side of the square the network sees (``None``: keep the image's size).
``crop_pct``, ``crop_mode``
    ``"center"`` (timm, torchvision): resize the shorter side to
    ``floor(input_size / crop_pct)`` (the longer side to
    ``int(that * long / short)``), then crop the centre ``input_size``
    square at ``int(round((side - input_size) / 2))``. ``"squash"``: resize
    to ``input_size`` x ``input_size`` ignoring the aspect ratio.
    ``"crop_first"`` (SimCLR's evaluation): crop the centre square of
    ``rint(crop_pct * shorter side)`` pixels at ``(side - crop + 1) // 2``,
    then resize it to ``input_size``. ``"crop_first_floor"`` (BYOL's): the
    same with ``int(crop_pct * shorter side)`` pixels, truncated.
``interpolation``
    a ``tf.image.resize`` method (``antialias`` widens its kernel when
    shrinking), or ``pil_bilinear`` / ``pil_bicubic``: Pillow's resampling,
    as torchvision's ``Resize`` applies it to PIL images (``pil_resize``).
``mean``, ``std``
    per-channel statistics of [0, 1] pixels; ``clip`` clips those pixels
    after resizing (bicubic overshoots).
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from ega_tf.core.constants import CROP_MODES  # noqa: E402 (re-exported)


@keras.saving.register_keras_serializable(package="ega_tf")
class TeacherPreprocess(layers.Layer):
    """uint8 (or float in [0, 255]) images -> the backbone's input.

    ``metadata`` is a JSON-able dict describing where the teacher came from
    (family, source file and its SHA-256, architecture, parity notes).
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                 input_size=None, crop_pct=1.0, crop_mode="center",
                 interpolation="bilinear", antialias=False, clip=False,
                 metadata=None, **kwargs):
        super().__init__(**kwargs)
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}; got "
                             f"{crop_mode!r}.")
        if not 0.0 < float(crop_pct) <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1]; got {crop_pct}.")
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_size = int(input_size) if input_size else None
        self.crop_pct = float(crop_pct)
        self.crop_mode = crop_mode
        self.interpolation = interpolation
        self.antialias = bool(antialias)
        self.clip = bool(clip)
        self.metadata = dict(metadata or {})

    @property
    def scale_size(self):
        """The shorter side before the centre crop (``"center"`` mode)."""
        # timm: floor(input_size / crop_pct); the epsilon keeps 224 / 0.875
        # (or any ratio of integers) from landing one pixel short.
        return int(math.floor(self.input_size / self.crop_pct + 1e-6))

    def _resize(self, x, size):
        import tensorflow as tf
        if self.interpolation.startswith("pil_"):
            from ega_tf.teachers import pil_resize
            return pil_resize.resize(x, size, self.interpolation[4:])
        return tf.image.resize(x, size, method=self.interpolation,
                               antialias=self.antialias)

    def _resize_shorter_then_crop(self, x):
        import tensorflow as tf
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        short, side = tf.minimum(h, w), self.scale_size
        long_new = tf.cast(side * tf.maximum(h, w) / short, tf.int32)
        new_h = tf.where(h <= w, side, long_new)
        new_w = tf.where(h <= w, long_new, side)
        x = self._resize(x, tf.stack([new_h, new_w]))
        c = self.input_size
        top = tf.cast(tf.round((new_h - c) / 2), tf.int32)
        left = tf.cast(tf.round((new_w - c) / 2), tf.int32)
        return x[:, top:top + c, left:left + c, :]

    def _crop_fraction(self, x):
        import tensorflow as tf
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        side = self.crop_pct * tf.cast(tf.minimum(h, w), tf.float32)
        if self.crop_mode == "crop_first":
            side = tf.math.rint(side)
        side = tf.cast(side, tf.int32)
        top, left = (h - side + 1) // 2, (w - side + 1) // 2
        return x[:, top:top + side, left:left + side, :]

    def _already_sized(self, images):
        """Whether ``images`` are known, when traced, to be squares of the
        input size already, which every crop mode then leaves as they are
        (``center`` only with ``crop_pct`` 1): a teacher run at the size it
        was trained at skips the resize."""
        h, w = images.shape[1:3]
        return (h == w == self.input_size and (
            self.crop_mode == "squash" or self.crop_pct == 1.0))

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.input_size and not self._already_sized(images):
            s = self.input_size
            if self.crop_mode == "center":
                x = self._resize_shorter_then_crop(x)
            elif self.crop_mode == "squash":
                x = self._resize(x, (s, s))
            else:
                x = self._resize(self._crop_fraction(x), (s, s))
        x = x / 255.0
        if self.clip:
            x = ops.clip(x, 0.0, 1.0)
        return (x - ops.array(self.mean, "float32")) / ops.array(
            self.std, "float32")

    def compute_output_shape(self, input_shape):
        if self.input_size:
            return (input_shape[0], self.input_size, self.input_size,
                    input_shape[-1])
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "input_size": self.input_size, "crop_pct": self.crop_pct,
                "crop_mode": self.crop_mode,
                "interpolation": self.interpolation,
                "antialias": self.antialias, "clip": self.clip,
                "metadata": self.metadata}


@keras.saving.register_keras_serializable(package="ega_tf")
class FeatureStandardize(layers.Layer):
    """Fixed per-feature ``(f - mean) / std``, statistics stored, not trained.

    Pooled ReLU features are all positive and share a large common component;
    left in, it makes every pair of teacher embeddings look alike (EGA's edge
    matrix E_t close to all ones). Statistics measured once on the unlabeled
    training images remove it.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, features):
        f = ops.cast(features, "float32")
        return (f - ops.array(self.mean, "float32")) / ops.array(
            self.std, "float32")

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="ega_tf")
class WithClassifier(layers.Layer):
    """Returns the teacher's features (its first input) unchanged; its
    second input, the logits of the teacher's own classifier, only keeps
    that classifier (layer ``classifier``) in the file. A supervised
    teacher's output is its pooled feature, as every teacher's is, and
    ``teacher_file.classifier`` gives the layer that reads it."""

    def call(self, inputs):
        features, _ = inputs
        return features

    def compute_output_shape(self, input_shape):
        return input_shape[0]

