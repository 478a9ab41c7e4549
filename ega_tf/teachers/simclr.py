"""SimCLR v1/v2 ResNets from their TF1 checkpoints (Chen et al., 2020).

The published checkpoints are TF1 name-based checkpoints; they are read
with ``tf.train.load_checkpoint`` (no TF1 code, no PyTorch). The encoder's
variables are ``base_model/conv2d[_N]/kernel`` and
``base_model/batch_normalization[_N]/{gamma,beta,moving_mean,
moving_variance}``, numbered in the order the layers were created: the stem,
then per block the projection shortcut's conv and BN first (first block of a
stage), then the three convs of the bottleneck.

The network is the bottleneck ResNet (stride on the 3x3 conv; BN eps 1e-5)
with SimCLR's padding: strided convs pad (k - 1) // 2 before and the rest
after, which equals PyTorch's symmetric padding for odd kernels (so the
students' ``conv`` serves), but the stem max-pool is TF's ``'SAME'`` 3x3/2,
which pads only at the end: kept as ``MaxPooling2D(3, 2, "same")``. A width
multiplier scales every channel count. The embedding is the global average
pool (2048 x width). Selective-kernel (SK) variants have other variables
and are refused.

Written here: keras-hub's ResNet pads its max-pool the PyTorch way.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from ega_tf.core.errors import ConversionError
from ega_tf.nn.layers import bn as _bn
from ega_tf.nn.layers import conv as _conv
from ega_tf.teachers.porting import WeightPorter
from ega_tf.teachers.resnet import bottleneck_stages

_CONV = re.compile(r"^conv2d(_\d+)?/kernel$")
# conv layers (1 stem + 3 per block + 1 shortcut per stage) -> blocks
_DEPTHS = {1 + 3 * sum(b) + 4: b for b in
           ([3, 4, 6, 3], [3, 4, 23, 3], [3, 8, 36, 3], [3, 24, 36, 3])}


def infer_arch(state):
    """Block counts and width multiplier from the variables (prefix
    ``base_model/`` stripped)."""
    convs = [k for k in state if _CONV.match(k)]
    if "conv2d/kernel" not in state or len(convs) not in _DEPTHS:
        raise ConversionError(
            f"Not a SimCLR ResNet-50/101/152/200 encoder ({len(convs)} conv "
            "layers under base_model/; selective-kernel variants are not "
            "supported).")
    stem = state["conv2d/kernel"]
    if tuple(stem.shape[:3]) != (7, 7, 3):
        raise ConversionError("SimCLR stem conv2d/kernel is "
                              f"{tuple(stem.shape)}, expected (7, 7, 3, 64*w).")
    return {"blocks": _DEPTHS[len(convs)], "width": int(stem.shape[-1]) // 64}


class _Names:
    """TF1's layer names in creation order: conv2d, conv2d_1, ..."""

    def __init__(self):
        self.count = {}

    def __call__(self, base):
        i = self.count.get(base, 0)
        self.count[base] = i + 1
        return base if i == 0 else f"{base}_{i}"


def build(arch):
    """The Keras encoder (float NHWC in [0, 1] -> pooled feature), named
    'backbone'; layer names are the checkpoint's."""
    name = _Names()

    def conv_bn(x, filters, kernel, stride, relu=True, where=None):
        del where  # TF1 numbers layers by creation order alone
        x = _conv(x, filters, kernel, stride, name=name("conv2d"))
        x = _bn(x, name("batch_normalization"))
        return layers.ReLU()(x) if relu else x

    w = arch["width"]
    inputs = keras.Input((None, None, 3), name="pixels")
    x = conv_bn(inputs, 64 * w, 7, 2)
    x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    x = bottleneck_stages(x, arch["blocks"],
                          [64 * w * 2**s for s in range(4)], conv_bn)
    out = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, out, name="backbone")


def port(model, state, ignore=()):
    """Copies the ``base_model/`` variables (prefix stripped) into
    ``build()``'s model by name, strictly; returns the keys used."""
    porter = WeightPorter(state, ignore=ignore)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            porter.port(layer.kernel, f"{layer.name}/kernel")
        elif isinstance(layer, layers.BatchNormalization):
            for var, part in ((layer.gamma, "gamma"), (layer.beta, "beta"),
                              (layer.moving_mean, "moving_mean"),
                              (layer.moving_variance, "moving_variance")):
                porter.port(var, f"{layer.name}/{part}")
    return porter.finish()
