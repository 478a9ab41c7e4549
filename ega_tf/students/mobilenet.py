"""MobileNetV2 (Sandler et al. 2018) as RepDistiller's CIFAR ``mobile_half``.

Stem 3x3 stride 2; inverted residual blocks (t, c, n, s) scaled by the width
multiplier, every block with its 1x1 expansion (also for t = 1); a 1x1 conv to
1280 channels and global average pooling.
"""

from __future__ import annotations

from keras import layers

from ega_tf.nn.layers import bn, conv_bn, depthwise, relu

# (expansion t, channels c, repeats n, first stride s)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def inverted_residual(x, out_ch, stride, t, name):
    hidden = x.shape[-1] * t
    out = conv_bn(x, hidden, 1, name=f"{name}_expand")
    out = depthwise(out, 3, stride, name=f"{name}_dw")
    out = relu(bn(out, name=f"{name}_dw_bn"))
    out = conv_bn(out, out_ch, 1, act=False, name=f"{name}_project")
    if stride == 1 and x.shape[-1] == out_ch:
        out = layers.Add(name=f"{name}_add")([x, out])
    return out


def mobilenet_v2(inputs, width=0.5):
    x = conv_bn(inputs, int(32 * width), 3, 2, name="stem")
    for s, (t, c, n, stride) in enumerate(SETTINGS):
        for i in range(n):
            x = inverted_residual(x, int(c * width), stride if i == 0 else 1,
                                  t, name=f"stage{s}_block{i}")
    last = int(1280 * width) if width > 1.0 else 1280
    x = conv_bn(x, last, 1, name="head")
    return layers.GlobalAveragePooling2D(name="pooled")(x)
