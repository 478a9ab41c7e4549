"""CIFAR ResNets (He et al. 2016) as RepDistiller builds them.

``resnet{8..110}`` use basic blocks on widths (16, 16, 32, 64);
``resnet8x4`` / ``resnet32x4`` on (32, 64, 128, 256). ``ResNet50`` is the
ImageNet bottleneck ResNet-50 with a CIFAR stem (3x3 conv, stride 1, no
max-pool; stride on the 3x3 conv of each bottleneck).
"""

from __future__ import annotations

from keras import layers

from ega_tf.nn.layers import bn, conv, conv_bn, relu


def basic_block(x, planes, stride, name):
    out = conv_bn(x, planes, 3, stride, name=f"{name}_1")
    out = conv_bn(out, planes, 3, 1, act=False, name=f"{name}_2")
    if stride != 1 or x.shape[-1] != planes:
        x = conv_bn(x, planes, 1, stride, act=False, name=f"{name}_down")
    return relu(layers.Add(name=f"{name}_add")([out, x]), name=f"{name}_out")


def cifar_resnet(inputs, depth, widths):
    """RepDistiller's ``resnet{depth}``; returns the pooled feature."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}.")
    n = (depth - 2) // 6
    x = conv_bn(inputs, widths[0], 3, name="stem")
    for stage, (planes, stride) in enumerate(
            zip(widths[1:], (1, 2, 2)), start=1):
        for i in range(n):
            x = basic_block(x, planes, stride if i == 0 else 1,
                            name=f"stage{stage}_block{i}")
    return layers.GlobalAveragePooling2D(name="pooled")(x)


def bottleneck(x, planes, stride, name, expansion=4):
    out = conv_bn(x, planes, 1, name=f"{name}_1")
    out = conv_bn(out, planes, 3, stride, name=f"{name}_2")
    out = conv_bn(out, planes * expansion, 1, act=False, name=f"{name}_3")
    if stride != 1 or x.shape[-1] != planes * expansion:
        x = conv_bn(x, planes * expansion, 1, stride, act=False,
                    name=f"{name}_down")
    return relu(layers.Add(name=f"{name}_add")([out, x]), name=f"{name}_out")


def resnet50_cifar(inputs, blocks=(3, 4, 6, 3)):
    x = conv(inputs, 64, 3, name="stem_conv")
    x = relu(bn(x, name="stem_bn"))
    for stage, (planes, n, stride) in enumerate(
            zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)), start=1):
        for i in range(n):
            x = bottleneck(x, planes, stride if i == 0 else 1,
                           name=f"stage{stage}_block{i}")
    return layers.GlobalAveragePooling2D(name="pooled")(x)
