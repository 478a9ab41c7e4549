"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018), CIFAR versions
as RepDistiller builds them (``ShuffleV1``: groups 3, widths 240/480/960;
``ShuffleV2``: net size 1, widths 116/232/464 and a 1x1 conv to 1024)."""

from __future__ import annotations

from keras import layers

from ega_tf.nn.layers import (ChannelShuffle, ChannelSlice, bn, conv_bn,
                              depthwise, relu)


def _v1_bottleneck(x, out_ch, stride, groups, name):
    in_ch = x.shape[-1]
    mid = out_ch // 4
    g = 1 if in_ch == 24 else groups  # the stem output is not grouped
    out = conv_bn(x, mid, 1, groups=g, name=f"{name}_1")
    out = ChannelShuffle(g, name=f"{name}_shuffle")(out)
    out = depthwise(out, 3, stride, name=f"{name}_dw")
    out = relu(bn(out, name=f"{name}_dw_bn"))
    out = conv_bn(out, out_ch, 1, groups=groups, act=False, name=f"{name}_3")
    if stride == 2:
        # PyTorch AvgPool2d(3, 2, padding=1) counts the zero padding.
        res = layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
        res = layers.AveragePooling2D(3, 2, name=f"{name}_pool")(res)
        out = layers.Concatenate(name=f"{name}_cat")([out, res])
    else:
        out = layers.Add(name=f"{name}_add")([out, x])
    return relu(out, name=f"{name}_out")


def shufflenet_v1(inputs, widths=(240, 480, 960), blocks=(4, 8, 4), groups=3):
    x = conv_bn(inputs, 24, 1, name="stem")
    for s, (w, n) in enumerate(zip(widths, blocks)):
        for i in range(n):
            # The first block concatenates its pooled input: grow by the rest.
            out_ch = w - x.shape[-1] if i == 0 else w
            x = _v1_bottleneck(x, out_ch, 2 if i == 0 else 1, groups,
                               name=f"stage{s}_block{i}")
    return layers.GlobalAveragePooling2D(name="pooled")(x)


def _v2_basic(x, name):
    c = x.shape[-1]
    half = c // 2
    x1 = ChannelSlice(0, half, name=f"{name}_keep")(x)
    x2 = ChannelSlice(half, c, name=f"{name}_branch")(x)
    out = conv_bn(x2, c - half, 1, name=f"{name}_1")
    out = bn(depthwise(out, 3, 1, name=f"{name}_dw"), name=f"{name}_dw_bn")
    out = conv_bn(out, c - half, 1, name=f"{name}_3")
    out = layers.Concatenate(name=f"{name}_cat")([x1, out])
    return ChannelShuffle(2, name=f"{name}_shuffle")(out)


def _v2_down(x, out_ch, name):
    mid = out_ch // 2
    left = bn(depthwise(x, 3, 2, name=f"{name}_l_dw"), name=f"{name}_l_dw_bn")
    left = conv_bn(left, mid, 1, name=f"{name}_l_1")
    right = conv_bn(x, mid, 1, name=f"{name}_r_1")
    right = bn(depthwise(right, 3, 2, name=f"{name}_r_dw"),
               name=f"{name}_r_dw_bn")
    right = conv_bn(right, mid, 1, name=f"{name}_r_2")
    out = layers.Concatenate(name=f"{name}_cat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(out)


def shufflenet_v2(inputs, widths=(116, 232, 464, 1024), blocks=(3, 7, 3)):
    x = conv_bn(inputs, 24, 1, name="stem")  # 1x1, as published
    for s, (w, n) in enumerate(zip(widths[:3], blocks)):
        x = _v2_down(x, w, name=f"stage{s}_down")
        for i in range(n):
            x = _v2_basic(x, name=f"stage{s}_block{i}")
    x = conv_bn(x, widths[3], 1, name="head")
    return layers.GlobalAveragePooling2D(name="pooled")(x)
