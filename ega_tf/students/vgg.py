"""VGG with BatchNorm (Simonyan & Zisserman 2015) as RepDistiller's CIFAR VGG.

Five blocks of 3x3 conv (with bias) + BN + ReLU; 2x2 max-pools after the
first three blocks (and the fourth only for 64-pixel inputs, as published);
global average pooling gives a 512-d feature.
"""

from __future__ import annotations

from keras import layers

from ega_tf.nn.layers import bn, conv, relu

# Block widths per depth, from RepDistiller's cfg 'S', 'A', 'B', 'D', 'E'.
VGG_CFG = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512],
         [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def vgg(inputs, depth):
    x = inputs
    height = inputs.shape[1]
    for b, widths in enumerate(VGG_CFG[depth]):
        for i, w in enumerate(widths):
            x = conv(x, w, 3, use_bias=True, name=f"block{b}_conv{i}")
            x = relu(bn(x, name=f"block{b}_bn{i}"))
        if b < 3 or (b == 3 and height == 64):
            x = layers.MaxPooling2D(2, name=f"pool{b}")(x)
    return layers.GlobalAveragePooling2D(name="pooled")(x)
