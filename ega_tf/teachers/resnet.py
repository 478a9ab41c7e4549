"""torchvision-layout ResNets (v1.5: stride on the 3x3 conv) as teachers.

Covers every family whose checkpoint is a torchvision ResNet once its prefix
is stripped: torchvision itself, MoCo v1/v2/v3-R50, SwAV (including the wide
variants), Barlow Twins, VICReg and DINO-R50. The network is
``keras_hub.models.ResNetBackbone`` built from arguments read off the
checkpoint's own shapes (block counts, widths, basic or bottleneck blocks),
followed by global average pooling; keras-hub pads like PyTorch and uses
BatchNorm epsilon 1e-5, so the port is exact.
"""

from __future__ import annotations

import re

import keras

from ega_tf.core.errors import ConversionError
from ega_tf.teachers.porting import (WeightPorter, port_batchnorm,
                                     torch_conv_kernel)

_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")


def infer_arch(state, cifar_stem_padding=None):
    """Block counts, widths and block type from torchvision keys/shapes.

    A 3x3 first convolution is a CIFAR stem (stride 1, no max-pool, as
    solo-learn replaces torchvision's); its padding is not in the weights,
    so the family states it (``cifar_stem_padding``)."""
    blocks = [0, 0, 0, 0]
    for key in state:
        m = _BLOCK.match(key)
        if m:
            stage, idx = int(m.group(1)) - 1, int(m.group(2))
            blocks[stage] = max(blocks[stage], idx + 1)
    if "conv1.weight" not in state or not all(blocks):
        raise ConversionError("Not a torchvision-layout ResNet: expected keys "
                              "conv1.weight and layer1..layer4.N.*; found e.g. "
                              + ", ".join(sorted(state)[:5]))
    bottleneck = "layer1.0.conv3.weight" in state
    filters = [int(state[f"layer{s}.0.conv1.weight"].shape[0])
               if bottleneck else int(state[f"layer{s}.0.conv2.weight"].shape[0])
               for s in range(1, 5)]
    arch = {"blocks": blocks, "filters": filters, "bottleneck": bottleneck,
            "stem": int(state["conv1.weight"].shape[0])}
    kernel = int(state["conv1.weight"].shape[-1])
    if kernel != 7:
        if kernel != 3 or cifar_stem_padding is None:
            raise ConversionError(
                f"A {kernel}x{kernel} first convolution is not torchvision's "
                "7x7 stem. A 3x3 one is a CIFAR stem, whose padding the file "
                "does not say: --format=lightning_cifar (solo-learn's: "
                "stride 1, padding 2, no max-pool).")
        arch["cifar_stem_padding"] = int(cifar_stem_padding)
        arch["resolution"] = 32  # the CIFAR images it was trained on
    return arch


def build(arch):
    """The Keras backbone (float NHWC -> pooled feature), named 'backbone'.

    keras-hub's ResNetBackbone requires 64 stem/first-stage filters and
    torchvision's stem, so the widened networks (SwAV RN50-w2/w4/w5) and
    those with a CIFAR stem are built by ``_build_named`` instead: the same
    torchvision network, layer names taken from the checkpoint keys."""
    if arch["filters"][0] != 64 or arch["stem"] != 64 or (
            "cifar_stem_padding" in arch):
        return _build_named(arch)
    import keras_hub
    body = keras_hub.models.ResNetBackbone(
        input_conv_filters=[arch["stem"]], input_conv_kernel_sizes=[7],
        stackwise_num_filters=arch["filters"],
        stackwise_num_blocks=arch["blocks"], stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block" if arch["bottleneck"] else "basic_block",
        use_pre_activation=False, image_shape=(None, None, 3), name="resnet")
    inputs = keras.Input((None, None, 3), name="pixels")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(body(inputs))
    return keras.Model(inputs, pooled, name="backbone")


def bottleneck_stages(x, blocks, filters, conv_bn):
    """The four bottleneck stages (stride on the 3x3 conv) of torchvision's
    and SimCLR's ResNets. ``conv_bn(x, filters, kernel, stride, relu, where)``
    makes one conv + BN (+ ReLU); ``where`` is (stage, block, part) with part
    "downsample", 1, 2 or 3. A block's shortcut is made first, as SimCLR's
    code creates it (its variable numbering depends on that)."""
    cin = x.shape[-1]
    for s, (n, planes) in enumerate(zip(blocks, filters)):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            shortcut = x
            if stride != 1 or cin != 4 * planes:
                shortcut = conv_bn(x, 4 * planes, 1, stride, False,
                                   (s, b, "downsample"))
            y = conv_bn(x, planes, 1, 1, True, (s, b, 1))
            y = conv_bn(y, planes, 3, stride, True, (s, b, 2))
            y = conv_bn(y, 4 * planes, 1, 1, False, (s, b, 3))
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
            cin = 4 * planes
    return x


def basic_stages(x, blocks, filters, conv_bn):
    """torchvision's basic-block stages (ResNet-18/34): the stride on the
    first 3x3 conv; ``conv_bn`` as in ``bottleneck_stages``."""
    cin = x.shape[-1]
    for s, (n, planes) in enumerate(zip(blocks, filters)):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            shortcut = x
            if stride != 1 or cin != planes:
                shortcut = conv_bn(x, planes, 1, stride, False,
                                   (s, b, "downsample"))
            y = conv_bn(x, planes, 3, stride, True, (s, b, 1))
            y = conv_bn(y, planes, 3, 1, False, (s, b, 2))
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
            cin = planes
    return x


def _build_named(arch):
    """torchvision's ResNet at any widths, with its stem or a CIFAR one;
    layer ``a_b_c`` holds the checkpoint's ``a.b.c.*``."""
    from ega_tf.nn.layers import bn, conv

    def conv_bn(x, filters, kernel, stride, relu, where):
        s, b, part = where
        name = f"layer{s + 1}_{b}_"
        conv_name, bn_name = ((name + "downsample_0", name + "downsample_1")
                              if part == "downsample" else
                              (f"{name}conv{part}", f"{name}bn{part}"))
        x = bn(conv(x, filters, kernel, stride, name=conv_name), bn_name)
        return keras.layers.ReLU()(x) if relu else x

    inputs = keras.Input((None, None, 3), name="pixels")
    if "cifar_stem_padding" in arch:
        # solo-learn's Conv2d(3, 64, 3, stride=1, padding=2): a 32-px image
        # becomes a 34-px map; no max-pool.
        x = keras.layers.ZeroPadding2D(arch["cifar_stem_padding"])(inputs)
        x = keras.layers.Conv2D(arch["stem"], 3, use_bias=False,
                                name="conv1")(x)
        x = keras.layers.ReLU()(bn(x, "bn1"))
    else:
        x = keras.layers.ReLU()(bn(conv(inputs, arch["stem"], 7, 2,
                                        name="conv1"), "bn1"))
        # PyTorch's MaxPool2d(3, 2, padding=1): zero padding is exact after
        # ReLU.
        x = keras.layers.ZeroPadding2D(1)(x)
        x = keras.layers.MaxPooling2D(3, 2, name="maxpool")(x)
    stages = bottleneck_stages if arch["bottleneck"] else basic_stages
    x = stages(x, arch["blocks"], arch["filters"], conv_bn)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, pooled, name="backbone")


def _port_named(backbone, porter):
    for layer in backbone.layers:
        key = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            porter.port(layer.kernel, f"{key}.weight", torch_conv_kernel)
        elif isinstance(layer, keras.layers.BatchNormalization):
            port_batchnorm(porter, layer, key)
    return porter.finish()


def port(backbone, state, ignore=()):
    """Copies a torchvision state dict into ``build(...)``'s model, strictly.

    Returns the list of source keys used. ``num_batches_tracked`` counters
    are always ignored (they do not affect inference).
    """
    porter = WeightPorter(state, ignore=(*ignore, "*num_batches_tracked"))
    if not any(layer.name == "resnet" for layer in backbone.layers):
        return _port_named(backbone, porter)
    body = backbone.get_layer("resnet")
    get = body.get_layer
    porter.port(get("conv1_conv").kernel, "conv1.weight", torch_conv_kernel)
    port_batchnorm(porter, get("conv1_bn"), "bn1")
    arch = infer_arch(state)
    convs = 3 if arch["bottleneck"] else 2
    for s, n in enumerate(arch["blocks"]):
        for b in range(n):
            ours, theirs = f"stack{s}_block{b}", f"layer{s + 1}.{b}"
            for k in range(1, convs + 1):
                porter.port(get(f"{ours}_{k}_conv").kernel,
                            f"{theirs}.conv{k}.weight", torch_conv_kernel)
                port_batchnorm(porter, get(f"{ours}_{k}_bn"), f"{theirs}.bn{k}")
            if f"{theirs}.downsample.0.weight" in state:
                porter.port(get(f"{ours}_0_conv").kernel,
                            f"{theirs}.downsample.0.weight", torch_conv_kernel)
                port_batchnorm(porter, get(f"{ours}_0_bn"), f"{theirs}.downsample.1")
    return porter.finish()
