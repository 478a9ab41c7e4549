"""The zoo: RepDistiller's CIFAR networks by name.

``create(name)`` returns a functional ``keras.Model`` mapping a normalised
float image batch [N, H, W, 3] to the pooled feature [N, C]; with
``num_classes`` it appends the linear classifier, and the model's trainable
parameters then equal the PyTorch reference's ``parameters()`` (the table in
docs/students.md). Keras's ``count_params()`` additionally counts BatchNorm's
moving mean and variance, which PyTorch keeps as buffers rather than
parameters.

Each entry also carries the learning rate the published scripts use for it:
0.05, or 0.01 for MobileNetV2 and the ShuffleNets (``default_lr``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import keras

from ega_tf.core.registry import Registry
from ega_tf.nn.layers import torch_dense
from ega_tf.students import mobilenet, resnet, shufflenet, vgg, wrn


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    build: Callable      # keras input tensor -> pooled feature tensor
    default_lr: float = 0.05


STUDENTS: Registry = Registry("student")

for _depth in (8, 14, 20, 32, 44, 56, 110):
    STUDENTS.register(f"resnet{_depth}", StudentSpec(functools.partial(
        resnet.cifar_resnet, depth=_depth, widths=(16, 16, 32, 64))))
for _depth in (8, 32):
    STUDENTS.register(f"resnet{_depth}x4", StudentSpec(functools.partial(
        resnet.cifar_resnet, depth=_depth, widths=(32, 64, 128, 256))))
for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    STUDENTS.register(f"wrn_{_depth}_{_k}", StudentSpec(functools.partial(
        wrn.wide_resnet, depth=_depth, widen=_k)))
for _depth in vgg.VGG_CFG:
    STUDENTS.register(f"vgg{_depth}", StudentSpec(
        functools.partial(vgg.vgg, depth=_depth)))
STUDENTS.register("MobileNetV2", StudentSpec(
    functools.partial(mobilenet.mobilenet_v2, width=0.5), default_lr=0.01))
STUDENTS.register("ShuffleV1", StudentSpec(shufflenet.shufflenet_v1,
                                           default_lr=0.01))
STUDENTS.register("ShuffleV2", StudentSpec(shufflenet.shufflenet_v2,
                                           default_lr=0.01))
STUDENTS.register("ResNet50", StudentSpec(resnet.resnet50_cifar))


def names():
    return STUDENTS.names()


def default_lr(name):
    """The published learning rate for student ``name``."""
    return STUDENTS.get(name).default_lr


def create(name, num_classes=None, input_shape=(32, 32, 3)):
    """Builds student ``name`` (see ``names()``).

    Args:
        name: a registered student name, e.g. ``"resnet8x4"``.
        num_classes: if given, append ``Dense(num_classes)`` on the pooled
            feature and return logits.
        input_shape: (H, W, 3) of the normalised float input.
    """
    spec = STUDENTS.get(name)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    pooled = spec.build(inputs)
    if num_classes is None:
        return keras.Model(inputs, pooled, name=name)
    logits = torch_dense(num_classes, pooled.shape[-1], name="classifier")(
        pooled)
    return keras.Model(inputs, logits, name=name)
