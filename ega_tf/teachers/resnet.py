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

from ega_tf.teachers.porting import (WeightPorter, port_batchnorm,
                                     torch_conv_kernel)

_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")


def infer_arch(state):
    """Block counts, widths and block type from torchvision keys/shapes."""
    blocks = [0, 0, 0, 0]
    for key in state:
        m = _BLOCK.match(key)
        if m:
            stage, idx = int(m.group(1)) - 1, int(m.group(2))
            blocks[stage] = max(blocks[stage], idx + 1)
    if "conv1.weight" not in state or not all(blocks):
        raise ValueError("Not a torchvision-layout ResNet: expected keys "
                         "conv1.weight and layer1..layer4.N.*; found e.g. "
                         + ", ".join(sorted(state)[:5]))
    bottleneck = "layer1.0.conv3.weight" in state
    filters = [int(state[f"layer{s}.0.conv1.weight"].shape[0])
               if bottleneck else int(state[f"layer{s}.0.conv2.weight"].shape[0])
               for s in range(1, 5)]
    return {"blocks": blocks, "filters": filters, "bottleneck": bottleneck,
            "stem": int(state["conv1.weight"].shape[0])}


def build(arch):
    """The Keras backbone (float NHWC -> pooled feature), named 'backbone'."""
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


def port(backbone, state, ignore=()):
    """Copies a torchvision state dict into ``build(...)``'s model, strictly.

    Returns the list of source keys used. ``num_batches_tracked`` counters
    are always ignored (they do not affect inference).
    """
    porter = WeightPorter(state, ignore=(*ignore, "*num_batches_tracked"))
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
