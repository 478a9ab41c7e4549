"""Any network as a student: what ``--student`` names, and the backbone it
builds.

``--student`` takes one of:

- a zoo name (``resnet8x4``: RepDistiller's CIFAR networks, ``names()``);
- ``keras.applications.NAME`` (``MobileNetV3Small``, ``EfficientNetV2B0``,
  ``ResNet50V2``, ...): built headless with average pooling at the run's
  image size, randomly initialised unless ``weights`` names a weights file;
- ``path/to/model.keras``: a Keras model of the user's, images in, and a
  feature vector, a feature map (pooled here) or logits (with
  ``feature_layer`` naming the penultimate layer) out;
- ``package.module:function``: a Python factory ``(input_shape) ->
  keras.Model`` with the same contract.

Each builds a backbone ``float image [N, H, W, 3] -> [N, C]`` taking the
image as its ``Input`` normalises it (``Input``: mean and standard deviation
of [0, 1] pixels, and the channel order). The zoo's is CLIP's, as the
published code; ``keras.applications`` networks are measured from their own
``preprocess_input`` (raw pixels for those that rescale inside); a user's
model either starts with its own ``Rescaling`` (raw pixels) or declares its
input as a teacher's is declared (``--config.student_input.mean/std``).
``build_student`` (``ega_tf.students.head``) puts that normalisation in
front, so the exported student takes uint8 images whatever the network.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import Tuple

from ega_tf.core.constants import CLIP_MEAN, CLIP_STD
from ega_tf.core.errors import UserError, first_line

KERAS_PREFIX = "keras.applications."
FORMS = ("a zoo name (resnet8x4, ...), keras.applications.NAME, "
         "path/to/model.keras, or package.module:function")


@dataclasses.dataclass(frozen=True)
class Input:
    """How a student's input is normalised: ``(pixel / 255 - mean) / std``
    per channel, after reversing RGB to BGR when ``bgr``."""
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    bgr: bool = False


CLIP_INPUT = Input(tuple(CLIP_MEAN), tuple(CLIP_STD))
# Raw pixels, 0..255: for networks that rescale their input themselves.
RAW_PIXELS = Input((0.0, 0.0, 0.0), (1 / 255,) * 3)


@dataclasses.dataclass(frozen=True)
class Source:
    """What a ``--student`` value names (parsed without TensorFlow)."""
    spec: str
    kind: str            # zoo | keras | file | factory
    label: str           # its name in workdirs and tables
    default_lr: float


def parse(spec) -> Source:
    """The form of ``spec``; an unusable one is a UserError listing the
    forms (an unknown zoo name lists the zoo)."""
    from ega_tf.students import zoo
    spec = str(spec)
    if spec.startswith(KERAS_PREFIX):
        name = spec[len(KERAS_PREFIX):]
        if not name.isidentifier():
            raise UserError(f"--student={spec}: name a network of "
                            "keras.applications, e.g. "
                            "keras.applications.MobileNetV3Small.")
        # As the published scripts train their mobile networks: at 0.05 a
        # MobileNetV3Small's BatchNorm statistics overflowed on digits.
        return Source(spec, "keras", name, 0.01)
    if spec.endswith(".keras"):
        stem = os.path.splitext(os.path.basename(spec))[0]
        return Source(spec, "file", stem or "model", 0.05)
    module, colon, function = spec.partition(":")
    if colon and module and function.isidentifier() and all(
            part.isidentifier() for part in module.split(".")):
        return Source(spec, "factory", function, 0.05)
    if spec in zoo.STUDENTS:
        return Source(spec, "zoo", spec, zoo.default_lr(spec))
    if colon or "/" in spec or "." in spec:
        raise UserError(f"--student={spec} is none of: {FORMS}.")
    zoo.STUDENTS.get(spec)  # lists the zoo
    raise AssertionError("unreachable")


# The recipe's BatchNorm momentum: PyTorch's 0.1, Keras's 0.9.
RECIPE_BN_MOMENTUM = 0.9


def build(spec, input_shape, *, weights=None, feature_layer=None,
          mean=None, std=None, bgr=None, bn_momentum=None):
    """(backbone, Input) of student ``spec`` at ``input_shape`` (H, W, 3).

    Args:
        weights: a weights file loaded into the network (for
            ``keras.applications``, what its ``weights=`` argument takes).
        feature_layer: a layer of a user's model whose output is the
            feature (needed when the model outputs logits).
        mean, std, bgr: the input's normalisation, replacing the one the
            network's kind implies (``Input``).
        bn_momentum: the momentum of every BatchNorm layer's moving
            statistics. None: the recipe's (0.9) for the zoo and
            ``keras.applications`` (whose 0.99-0.999, set for ImageNet's
            long runs, leave the statistics near their initial values after
            a few hundred steps), a model of yours keeps its own.
    """
    source = parse(spec)
    input_shape = tuple(int(s) for s in input_shape)
    if feature_layer and source.kind not in ("file", "factory"):
        raise UserError("student_feature_layer applies to a student of "
                        f"your own (a .keras file or a factory), not to "
                        f"--student={spec}.")
    if source.kind == "zoo":
        from ega_tf.students import zoo
        backbone, implied = zoo.create(spec, input_shape=input_shape), \
            CLIP_INPUT
        if weights:
            _load_weights(backbone, weights, spec)
    elif source.kind == "keras":
        backbone, implied = _keras_application(source, input_shape, weights)
    else:
        model = (_load_file(spec) if source.kind == "file"
                 else _call_factory(spec, input_shape))
        backbone, implied = _user_backbone(model, spec, input_shape,
                                           feature_layer)
        if weights:
            _load_weights(backbone, weights, spec)
    if implied is None and (mean is None or std is None):
        raise UserError(
            f"--student={spec}: nothing says how the model expects its "
            "images normalised (it has no Rescaling layer at its input). "
            "Declare it, as for a teacher: --config.student_input.mean="
            "0.485,0.456,0.406 --config.student_input.std=0.229,0.224,0.225"
            " (per-channel statistics of [0, 1] pixels), or "
            "--config.student_input.std=0.00392156862745098 for raw 0-255 "
            "pixels.")
    if bn_momentum is None and source.kind in ("zoo", "keras"):
        bn_momentum = RECIPE_BN_MOMENTUM
    if bn_momentum is not None:
        from ega_tf.nn.layers import batchnorm_layers
        for layer in batchnorm_layers(backbone):
            layer.momentum = float(bn_momentum)
    base = implied or Input(tuple(mean), tuple(std))
    return backbone, Input(
        tuple(mean) if mean is not None else base.mean,
        tuple(std) if std is not None else base.std,
        base.bgr if bgr is None else bool(bgr))


def _load_weights(model, path, spec):
    if not os.path.isfile(path):
        raise UserError(f"student_weights {path!r} does not exist.")
    try:
        model.load_weights(path)
    except Exception as e:  # h5/keras readers raise several types
        raise UserError(f"student_weights {path!r} do not fit --student="
                        f"{spec}: {first_line(e, 200)}") from None


# --------------------------------------------------------- keras.applications
def keras_application_names():
    import keras
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(
                      getattr(keras.applications, n)))


def _keras_application(source, input_shape, weights):
    import keras
    fn = getattr(keras.applications, source.label, None)
    if fn is None or source.label not in keras_application_names():
        raise UserError(f"Unknown network keras.applications."
                        f"{source.label}. Valid names: "
                        f"{', '.join(keras_application_names())}.")
    if weights and not os.path.isfile(weights):
        raise UserError(f"student_weights {weights!r} does not exist (ImageNet"
                        " weights cannot be downloaded here: BUILD.md says "
                        "where to get them).")
    try:
        backbone = fn(include_top=False, weights=weights or None,
                      input_shape=input_shape, pooling="avg")
    except ValueError as e:
        raise UserError(
            f"--student={source.spec} cannot take {input_shape[0]}x"
            f"{input_shape[1]} images: {first_line(e, 200)} Train at a size "
            "it takes (--config.data.image_size).") from None
    except Exception as e:  # a weights file of another network
        raise UserError(f"--student={source.spec}: {first_line(e, 200)}") \
            from None
    backbone.name = source.label
    # The keras.applications module that defines the named network, for
    # its preprocess_input (known only from the user's --student name).
    module = importlib.import_module(fn.__module__)
    return backbone, measure_input(module.preprocess_input, source.spec)


def measure_input(preprocess, what="the network"):
    """The ``Input`` that a keras.applications ``preprocess_input``
    applies, measured on probe images: per channel ``a * pixel + b``, maybe
    with the channels reversed (its "tf", "torch" and "caffe" modes, or the
    identity for networks that rescale inside)."""
    import numpy as np
    zero = np.zeros((1, 1, 1, 3), np.float32)
    full = np.full((1, 1, 1, 3), 255.0, np.float32)
    probe = np.array([[[[10.0, 100.0, 200.0]]]], np.float32)
    f = [np.asarray(preprocess(p.copy()), np.float64).reshape(3)
         for p in (zero, full, probe)]
    b, a = f[0], (f[1] - f[0]) / 255.0
    if np.any(np.abs(a) < 1e-12):
        raise UserError(f"Cannot tell how {what} expects its input.")
    source = (f[2] - b) / a
    order = [int(np.argmin(np.abs(probe.reshape(3) - v))) for v in source]
    if order not in ([0, 1, 2], [2, 1, 0]):
        raise UserError(f"Cannot tell how {what} expects its input.")
    found = Input(tuple(float(-bc / (255 * ac)) + 0.0  # no -0.0
                        for bc, ac in zip(b, a)),
                  tuple(float(1 / (255 * ac)) for ac in a),
                  bgr=order == [2, 1, 0])
    check = np.random.default_rng(0).uniform(0, 255, (2, 3, 3, 3))
    want = np.asarray(preprocess(check.astype(np.float32).copy()))
    pixels = check[..., ::-1] if found.bgr else check
    got = (pixels / 255 - np.array(found.mean)) / np.array(found.std)
    if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise UserError(f"Cannot tell how {what} expects its input.")
    return found


# ---------------------------------------------------- a user's own network
def _load_file(path):
    from ega_tf.nn import serialization
    return serialization.load_user_file(
        path, "Student", " Is it a complete model saved with "
        "model.save('...keras'), with its custom layers registered "
        "(keras.saving.register_keras_serializable)?")


def _call_factory(spec, input_shape):
    import keras
    module_name, _, function = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as python -m does
    try:  # the user's module:function, named on the command line
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"--student={spec}: cannot import {module_name!r} "
                        f"({first_line(e, 200)}); it must be importable "
                        "from the working directory or PYTHONPATH.") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UserError(f"--student={spec}: {module_name} has no function "
                        f"{function!r}.")
    try:
        model = fn(input_shape)
    except UserError:
        raise
    except Exception as e:  # the user's code: say whose
        raise UserError(f"--student={spec}: {function}({input_shape}) "
                        f"failed: {type(e).__name__}: {first_line(e, 200)}"
                        ) from e
    if not isinstance(model, keras.Model):
        raise UserError(f"--student={spec}: {function}(input_shape) must "
                        f"return a keras.Model; got {type(model).__name__}.")
    return model


def _starts_with_rescaling(model):
    """Whether the model's first layer after its input rescales it (then
    it takes raw 0-255 pixels)."""
    import keras
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        return isinstance(layer, (keras.layers.Rescaling,
                                  keras.layers.Normalization))
    return False


def _softmax_output(model):
    import keras
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def _user_backbone(model, spec, input_shape, feature_layer):
    """The user's model as a backbone image -> [N, C] at ``input_shape``,
    and the Input it implies (None: it must be declared)."""
    import keras
    if not model.inputs or len(model.inputs) != 1:
        raise UserError(f"Student {spec} must take one input (an image "
                        "batch).")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        channels_first = len(shape) == 4 and shape[1] == 3
        raise UserError(
            f"Student {spec} takes input of shape {shape}"
            + ("; that is channels-first [N, 3, H, W]" if channels_first
               else "") + ": a student takes RGB images [N, H, W, 3] "
            "(channels last).")
    if feature_layer:
        try:
            layer = model.get_layer(feature_layer)
        except ValueError:
            raise UserError(
                f"Student {spec} has no layer {feature_layer!r}; its layers:"
                f" {', '.join(l.name for l in model.layers[-6:])} (the last"
                " six).") from None
        model = keras.Model(model.inputs, layer.output)
    elif _softmax_output(model):
        raise UserError(
            f"Student {spec} outputs class probabilities (softmax). Name the"
            " layer that gives its features: --config.student_feature_layer"
            f"={model.layers[-2].name if len(model.layers) > 1 else 'NAME'}"
            " (its penultimate layer).")
    out_rank = len(model.outputs[0].shape) if len(model.outputs) == 1 else 0
    if out_rank not in (2, 4):
        raise UserError(f"Student {spec} outputs {len(model.outputs)} "
                        "tensor(s) of shapes "
                        f"{[tuple(o.shape) for o in model.outputs]}; a "
                        "student outputs one feature vector [N, C] or map "
                        "[N, H, W, C].")
    inputs = keras.Input(input_shape, name="image")
    try:
        x = model(inputs)
    except Exception as e:  # a fixed-size network
        raise UserError(
            f"Student {spec} cannot take {input_shape[0]}x{input_shape[1]} "
            f"images (it was built for {shape[1]}x{shape[2]}): "
            f"{first_line(e, 200)}. Train at its size "
            "(--config.data.image_size), or build it for any size.") \
            from None
    if out_rank == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    backbone = keras.Model(inputs, x, name=parse(spec).label)
    return backbone, RAW_PIXELS if _starts_with_rescaling(model) else None
