"""Pillow's ``Image.resize`` for uint8 RGB images, as two matrix products.

The PyTorch families evaluate on PIL images: torchvision's ``Resize`` calls
Pillow, whose resampling differs from ``tf.image.resize`` in three ways that
matter here: near the borders it drops the taps that fall outside the image
and renormalises the rest (TF clamps coordinates), it always widens the
kernel by the scale when shrinking (antialiasing), and it rounds to 8 bits
after each of its two passes (horizontal, then vertical). This module builds,
for any input and output length, the (output x input) weight matrix Pillow
uses (its kernel, window and normalisation; see Pillow's
``libImaging/Resample.c``, ``precompute_coeffs``), and applies the two passes
with uint8 rounding in between. Plain matmuls: it runs in ``tf.data``, in a
model and under XLA (which has no bicubic resize kernel).

Pillow computes with fixed-point weights (22 fractional bits); float32 here
can land on the other side of a .5 rounding edge, so a few pixels differ by
one grey level (measured in ``tests/test_pil_resize.py``).
"""

from __future__ import annotations

import tensorflow as tf

# Pillow's filters: (support, kernel).
_A = -0.5  # Pillow's bicubic uses a = -0.5 (PyTorch's tensors use -0.75)


def _bicubic(x):
    x = tf.abs(x)
    near = ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * _A
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, 0.0))


def _bilinear(x):
    return tf.maximum(1.0 - tf.abs(x), 0.0)


FILTERS = {"bicubic": (2.0, _bicubic), "bilinear": (1.0, _bilinear)}


def weights(in_size, out_size, method="bicubic"):
    """Pillow's (out_size, in_size) float32 resampling matrix."""
    support, kernel = FILTERS[method]
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = support * filterscale
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale  # [out]
    # C's (int) truncates toward zero; the lower bound is clamped at 0.
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size)
    j = tf.range(in_size)
    inside = (j[None, :] >= xmin[:, None]) & (j[None, :] < xmax[:, None])
    arg = (tf.cast(j, tf.float64)[None, :] - center[:, None] + 0.5) \
        / filterscale
    w = tf.where(inside, kernel(arg), 0.0)
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    w = tf.math.divide_no_nan(w, total)
    return tf.cast(w, tf.float32)


def _round8(x):
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


def resize(images, size, method="bicubic"):
    """Resizes NHWC images with values 0..255 (any float or int dtype) to
    ``size`` = (height, width) as Pillow does; returns float32 0..255 with
    integer values. (Where Pillow skips a pass because a length is kept,
    the matrix here is the identity, so the result is the same.)"""
    x = tf.cast(images, tf.float32)
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    x = _round8(tf.einsum("ow,nhwc->nhoc", weights(w, size[1], method), x))
    return _round8(tf.einsum("oh,nhwc->nowc", weights(h, size[0], method), x))
