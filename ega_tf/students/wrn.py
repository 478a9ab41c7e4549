"""Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation, as RepDistiller.

``wrn_{depth}_{k}``: widths (16, 16k, 32k, 64k), (depth - 4) / 6 blocks per
stage. A block whose input and output widths differ applies BN-ReLU once and
feeds the result to both the residual branch and a 1x1 shortcut convolution.
"""

from __future__ import annotations

from keras import layers

from ega_tf.nn.layers import bn, conv, relu


def wide_block(x, planes, stride, name):
    equal = x.shape[-1] == planes
    pre = relu(bn(x, name=f"{name}_bn1"))
    out = conv(pre, planes, 3, stride, name=f"{name}_conv1")
    out = relu(bn(out, name=f"{name}_bn2"))
    out = conv(out, planes, 3, 1, name=f"{name}_conv2")
    shortcut = x if equal else conv(pre, planes, 1, stride,
                                    name=f"{name}_shortcut")
    return layers.Add(name=f"{name}_add")([shortcut, out])


def wide_resnet(inputs, depth, widen):
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n + 4, got {depth}.")
    n = (depth - 4) // 6
    x = conv(inputs, 16, 3, name="stem_conv")
    for stage, (planes, stride) in enumerate(
            zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2)), start=1):
        for i in range(n):
            x = wide_block(x, planes, stride if i == 0 else 1,
                           name=f"stage{stage}_block{i}")
    x = relu(bn(x, name="final_bn"))
    return layers.GlobalAveragePooling2D(name="pooled")(x)
