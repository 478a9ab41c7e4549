"""RepDistiller's supervised CIFAR teachers (``ckpt_epoch_240.pth``:
``{'model': state_dict, ...}``) -> the student zoo's network with the
checkpoint's weights, and its classifier.

The zoo (``ega_tf.students``) rebuilds RepDistiller's networks layer for
layer, so a teacher is the zoo's network of the same name: which one is
read off the state dict, the family from its names (``layer1.0.conv1`` and
``fc``: a CIFAR ResNet; ``layer4`` and ``linear``: ResNet50; ``block1.layer``:
a wide ResNet; ``block0.0``: VGG), the depth and widths from its shapes.
MobileNetV2 and the ShuffleNets, which RepDistiller trains as students
only, are not read.
"""

from __future__ import annotations

import re

from ega_tf.core.errors import ConversionError
from ega_tf.teachers.porting import (WeightPorter, port_batchnorm,
                                     torch_conv_kernel, torch_dense_kernel)

# The networks RepDistiller publishes as teachers, and the other zoo
# depths that follow the same layouts.
_RESNET_WIDTHS = {(16, 16, 32, 64): "", (32, 64, 128, 256): "x4"}
_CLASSIFIERS = ("fc", "linear", "classifier")


def _count(state, pattern):
    found = {int(m.group(1)) for k in state
             for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def _shape(state, key):
    return tuple(int(s) for s in state[key].shape)


def infer_arch(state):
    """``{"network": zoo name, "num_classes": K, "resolution": 32}``."""
    from ega_tf import students
    classifier = next((c for c in _CLASSIFIERS if f"{c}.weight" in state),
                      None)
    if classifier is None:
        raise ConversionError(
            "Not a RepDistiller network: no classifier (fc, linear or "
            "classifier) among its keys; found e.g. "
            + ", ".join(sorted(state)[:6]))
    if "block0.0.weight" in state:
        convs = sum(1 for k, v in state.items()
                    if re.match(r"block\d\.\d+\.weight$", k) and v.ndim == 4)
        name = f"vgg{convs + 3}"
    elif "block1.layer.0.conv1.weight" in state:
        n = _count(state, r"block1\.layer\.(\d+)\.")
        widen = _shape(state, "block1.layer.0.conv1.weight")[0] // 16
        name = f"wrn_{6 * n + 4}_{widen}"
    elif "layer4.0.conv1.weight" in state:
        blocks = tuple(_count(state, rf"layer{s}\.(\d+)\.")
                       for s in range(1, 5))
        bottleneck = "layer1.0.conv3.weight" in state
        name = "ResNet50" if bottleneck and blocks == (3, 4, 6, 3) else None
        if name is None:
            raise ConversionError(
                f"A four-stage ResNet with blocks {blocks}"
                f"{' (bottleneck)' if bottleneck else ''}; of those the zoo "
                "has ResNet50 only (bottleneck, 3-4-6-3).")
    elif "layer1.0.conv1.weight" in state:
        n = _count(state, r"layer1\.(\d+)\.")
        widths = (_shape(state, "conv1.weight")[0],
                  *(_shape(state, f"layer{s}.0.conv2.weight")[0]
                    for s in (1, 2, 3)))
        if widths not in _RESNET_WIDTHS:
            raise ConversionError(
                f"A CIFAR ResNet of widths {widths}; the zoo's have "
                + " or ".join(str(w) for w in _RESNET_WIDTHS) + ".")
        name = f"resnet{6 * n + 2}{_RESNET_WIDTHS[widths]}"
    else:
        raise ConversionError(
            "Not a RepDistiller teacher layout (CIFAR ResNet, ResNet50, "
            "WRN or VGG); found e.g. " + ", ".join(sorted(state)[:6]))
    if name not in students.names():
        raise ConversionError(f"The checkpoint holds RepDistiller's {name}, "
                              "which the student zoo does not build.")
    return {"network": name, "classifier": classifier,
            "num_classes": _shape(state, f"{classifier}.weight")[0],
            "resolution": 32}


def build(arch):
    """The zoo network (normalised float NHWC -> pooled feature), named
    'backbone'."""
    from ega_tf import students
    backbone = students.create(arch["network"],
                               input_shape=(None, None, 3))
    backbone.name = "backbone"
    return backbone


def build_classifier(arch, width):
    """The linear classifier on the pooled feature, named 'classifier'."""
    import keras
    layer = keras.layers.Dense(arch["num_classes"], name="classifier")
    layer.build((None, width))
    return layer


def _conv_bn(porter, get, ours, theirs_conv, theirs_bn):
    porter.port(get(f"{ours}_conv").kernel, f"{theirs_conv}.weight",
                torch_conv_kernel)
    port_batchnorm(porter, get(f"{ours}_bn"), theirs_bn)


def _port_resnet(porter, get, state, network):
    _conv_bn(porter, get, "stem", "conv1", "bn1")
    stages, convs, short = ((4, 3, "shortcut") if network == "ResNet50"
                            else (3, 2, "downsample"))
    for s in range(1, stages + 1):
        for i in range(_count(state, rf"layer{s}\.(\d+)\.")):
            ours, theirs = f"stage{s}_block{i}", f"layer{s}.{i}"
            for k in range(1, convs + 1):
                _conv_bn(porter, get, f"{ours}_{k}", f"{theirs}.conv{k}",
                         f"{theirs}.bn{k}")
            if f"{theirs}.{short}.0.weight" in state:
                _conv_bn(porter, get, f"{ours}_down", f"{theirs}.{short}.0",
                         f"{theirs}.{short}.1")


def _port_wrn(porter, get, state):
    porter.port(get("stem_conv").kernel, "conv1.weight", torch_conv_kernel)
    for s in (1, 2, 3):
        for i in range(_count(state, rf"block{s}\.layer\.(\d+)\.")):
            ours, theirs = f"stage{s}_block{i}", f"block{s}.layer.{i}"
            for k in (1, 2):
                port_batchnorm(porter, get(f"{ours}_bn{k}"), f"{theirs}.bn{k}")
                porter.port(get(f"{ours}_conv{k}").kernel,
                            f"{theirs}.conv{k}.weight", torch_conv_kernel)
            if f"{theirs}.convShortcut.weight" in state:
                porter.port(get(f"{ours}_shortcut").kernel,
                            f"{theirs}.convShortcut.weight",
                            torch_conv_kernel)
    port_batchnorm(porter, get("final_bn"), "bn1")


def _port_vgg(porter, get, state):
    for b in range(5):
        convs = sorted(int(m.group(1)) for k in state for m in
                       [re.match(rf"block{b}\.(\d+)\.weight$", k)]
                       if m and state[k].ndim == 4)
        for i, index in enumerate(convs):
            conv = get(f"block{b}_conv{i}")
            porter.port(conv.kernel, f"block{b}.{index}.weight",
                        torch_conv_kernel)
            porter.port(conv.bias, f"block{b}.{index}.bias")
            port_batchnorm(porter, get(f"block{b}_bn{i}"),
                           f"block{b}.{index + 1}")


def port(backbone, state, ignore=(), classifier=None):
    """Copies the state dict into ``build(...)``'s network and
    ``classifier``, strictly; returns the source keys used."""
    arch = infer_arch(state)
    porter = WeightPorter(state, ignore=(*ignore, "*num_batches_tracked"))
    get, network = backbone.get_layer, arch["network"]
    if network.startswith("vgg"):
        _port_vgg(porter, get, state)
    elif network.startswith("wrn_"):
        _port_wrn(porter, get, state)
    else:
        _port_resnet(porter, get, state, network)
    if classifier is not None:
        name = arch["classifier"]
        porter.port(classifier.kernel, f"{name}.weight", torch_dense_kernel)
        porter.port(classifier.bias, f"{name}.bias")
    return porter.finish()
