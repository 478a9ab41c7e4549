"""The teacher file: what a ``.keras`` teacher must be, and reading/writing it.

The contract: a functional model ``uint8 image [N, H, W, 3] ->
TeacherPreprocess -> backbone (-> FeatureStandardize) -> [N, F]``. The
preprocessing its checkpoint family expects travels inside it, together with
metadata (family, source, embedding width), and the network itself is the
sub-model named ``backbone`` (``teacher.get_layer("backbone")``). A file
that breaks the contract (float input, no preprocessing, a feature map or
class probabilities as output) is refused with a pointer to
``convert_teacher --model``, which wraps any encoder with declared
preprocessing.
"""

from __future__ import annotations

import json
import os
import zipfile

from ega_tf.core.errors import UserError, first_line
from ega_tf.core.io_utils import atomic_output
from ega_tf.nn import serialization
from ega_tf.teachers.preprocess import TeacherPreprocess, WithClassifier

_WRAP_HINT = ("wrap your encoder with `python -m ega_tf.convert_teacher "
              "--model=FILE --input_size=S --mean=... --std=... "
              "--out=teacher.keras` (BUILD.md, 'Teachers')")


def assemble(backbone, preprocess, name="teacher", standardize=None,
             classifier=None):
    """The teacher model: uint8 image -> preprocess -> ``backbone``
    (-> ``standardize``, a ``FeatureStandardize``, if given). A supervised
    teacher's ``classifier`` (a layer named "classifier" on the pooled
    feature) travels in the file beside the features
    (``classifier(teacher)`` gives it back)."""
    import keras
    if backbone.name != "backbone":
        raise ValueError("The teacher's network must be a model named "
                         f"'backbone'; got {backbone.name!r}.")
    if classifier is not None and (standardize is not None
                                   or classifier.name != "classifier"):
        raise ValueError("A teacher's classifier must be a layer named "
                         "'classifier' reading the backbone's features "
                         "unstandardised.")
    inputs = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    out = backbone(preprocess(inputs))
    if classifier is not None:
        out = WithClassifier(name="features")([out, classifier(out)])
    if standardize is not None:
        out = standardize(out)
    return keras.Model(inputs, out, name=name)


def classifier(teacher):
    """The teacher's own classifier layer (on its output features), or
    None when it has none (a self-supervised teacher)."""
    try:
        layer = teacher.get_layer("classifier")
    except ValueError:
        return None
    return layer if any(isinstance(l, WithClassifier)
                        for l in teacher.layers) else None


TEACHER_LOGITS = ("auto", "head", "classifier")


def logits_source(teacher, num_classes, setting="auto"):
    """("head" | "classifier", a sentence saying which and why): where the
    logit methods read the teacher's logits. ``setting`` auto takes the
    teacher's own classifier when it has one for ``num_classes`` classes,
    else the online head's; "classifier" without one is a UserError."""
    from ega_tf.core.registry import check_choice
    check_choice("teacher_logits", setting, TEACHER_LOGITS)
    own = classifier(teacher)
    fits = own is not None and int(own.units) == num_classes
    if setting == "classifier" and not fits:
        raise UserError(
            "teacher_logits=classifier: the teacher has "
            + ("no classifier of its own (a self-supervised teacher)"
               if own is None else f"a classifier for {own.units} classes, "
               f"and the data set has {num_classes}")
            + "; use --config.teacher_logits=head (the online head's).")
    if fits and setting != "head":
        return "classifier", ("The methods read the teacher's logits from "
                              f"its own classifier ({num_classes} classes).")
    return "head", ("The methods read the teacher's logits from the online "
                    "teacher head" + (
                        f" (its own classifier has {own.units} classes, the "
                        f"data {num_classes})" if own is not None and not fits
                        else "") + ".")


def preprocess_layer(teacher):
    for layer in teacher.layers:
        if isinstance(layer, TeacherPreprocess):
            return layer
    return None


def metadata(teacher):
    layer = preprocess_layer(teacher)
    return dict(layer.metadata) if layer is not None else {}


def describe(teacher):
    return (f"teacher {teacher.name}: {teacher.count_params():,} params, "
            f"embedding {teacher.output_shape[-1]}, "
            f"{json.dumps(metadata(teacher), sort_keys=True)}")


def check_output_path(path):
    """Refuses an output name that ``save`` would refuse, before any work."""
    if not str(path).endswith(".keras"):
        raise UserError(f"A teacher file must end in .keras; got {path!r}.")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"Cannot write {path!r}: {parent!r} is a file.")


def save(teacher, path):
    """Writes ``teacher`` to ``path`` (a ``.keras`` file) atomically."""
    check_output_path(path)
    with atomic_output(path, suffix=".keras") as tmp:
        teacher.save(tmp)


def _keras_archive_config(path):
    """The model config of a ``.keras`` file, or a UserError saying why the
    file is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise UserError(
                    f"{path!r} is not a valid Keras file: the archive has no "
                    "config.json/model.weights.h5. Was it written by "
                    "model.save(...)?")
            return json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(
            f"{path!r} is not a valid Keras file ({e}): it is truncated or "
            "not a .keras archive. Write it again, or convert the checkpoint"
            " again with `python -m ega_tf.convert_teacher`.") from None


def _saved_model_refs(config):
    """The SavedModel directories a model config calls through TFSMLayer."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "TFSMLayer":
                found.append(node.get("config", {}).get("filepath"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(config)
    return found


PRECISIONS = ("float32", "bfloat16")


def with_precision(teacher, precision):
    """Runs the frozen network in ``precision``; the preprocessing and any
    standardisation stay float32 and the features come out as float32.
    What bfloat16 saves, on a CPU with bfloat16 arithmetic, and how far it
    moves the features, are measured in docs/speed.md."""
    import keras

    from ega_tf.core.registry import check_choice
    check_choice("teacher_precision", precision, PRECISIONS)
    if precision != "float32":
        policy = keras.DTypePolicy(f"mixed_{precision}")
        for layer in teacher.get_layer("backbone")._flatten_layers(
                include_self=True):
            layer.dtype_policy = policy
    return teacher


def check_contract(teacher, path="the teacher"):
    """Raises UserError unless ``teacher`` is uint8 RGB -> [N, F] with a
    ``TeacherPreprocess`` layer."""
    inp = teacher.inputs[0] if teacher.inputs else None
    if inp is None or len(inp.shape) != 4 or inp.shape[-1] != 3:
        shape = None if inp is None else tuple(inp.shape)
        raise UserError(f"{path} takes input of shape {shape}; a teacher "
                        "takes RGB images [N, H, W, 3]. To use it, "
                        + _WRAP_HINT + ".")
    if str(inp.dtype) != "uint8":
        raise UserError(
            f"{path} takes {inp.dtype} input; a teacher takes uint8 images "
            "and does its own resizing and normalisation. To use a model that "
            "expects preprocessed floats, " + _WRAP_HINT + ".")
    if len(teacher.output_shape) != 2:
        raise UserError(
            f"{path} outputs shape {teacher.output_shape}; a teacher must "
            "output a [batch, features] embedding (add global pooling, or "
            "export the layer that gives the embedding).")
    if preprocess_layer(teacher) is None:
        raise UserError(
            f"{path} has no ega_tf preprocessing layer, so nothing says how "
            "its checkpoint expects images to be resized and normalised; "
            + _WRAP_HINT + ".")


def load(path, trust_saved_model=False):
    """Loads a teacher ``.keras`` file and checks the teacher contract.

    A teacher made from a SavedModel (``convert_teacher --model=DIR``) calls
    that directory; Keras loads such files only when trusted, so pass
    ``trust_saved_model=True`` (``--trust_saved_model``) for files you made.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(
            f"Teacher file {path!r} does not exist. Make one with "
            "`python -m ega_tf.pretrain --dataset=digits --out=teacher.keras` "
            "(README.md) or convert a published checkpoint (BUILD.md).")
    if not path.endswith(".keras") or not os.path.isfile(path):
        raise UserError(f"Expected a .keras teacher file, got {path!r}.")
    refs = _saved_model_refs(_keras_archive_config(path))
    if refs and not trust_saved_model:
        raise UserError(
            f"Teacher {path!r} calls the SavedModel {refs[0]!r}, which can "
            "run arbitrary TensorFlow ops; if you made it, rerun with "
            "--trust_saved_model.")
    # The classes a teacher file may hold, registered with Keras (the
    # preprocessing's are imported above).
    from ega_tf.teachers import clip_resnet, vit  # noqa: F401
    try:
        teacher = serialization.load_model(path, compile=False,
                                           safe_mode=not refs)
    except Exception as e:  # h5/zip/deserialisation errors name no file
        raise UserError(f"Could not read teacher file {path!r}: "
                        f"{first_line(e)}. Is "
                        "it a complete .keras file written by ega_tf?") \
            from None
    check_contract(teacher, f"Teacher {path!r}")
    return teacher


def _backbone_input_size(teacher):
    """(H, W) the backbone is built for, or None when it takes any size
    (or the file has no sub-model named ``backbone``)."""
    try:
        backbone = teacher.get_layer("backbone")
    except ValueError:
        return None
    shape = getattr(backbone, "input_shape", None)
    if not shape or len(shape) != 4 or None in shape[1:3]:
        return None
    return tuple(int(s) for s in shape[1:3])


def check_runs_on(teacher, image_size, path="The teacher"):
    """Runs ``teacher`` on two blank images of ``image_size`` (H, W);
    a UserError in one line says which size it takes if it cannot."""
    import numpy as np
    try:
        teacher(np.zeros((2, *image_size, 3), np.uint8), training=False)
    except Exception as e:  # shape errors come as several types
        layer = preprocess_layer(teacher)
        takes = _backbone_input_size(teacher)
        if layer is not None and layer.input_size:
            what = (f"it resizes images to {layer.input_size}x"
                    f"{layer.input_size} ({layer.crop_mode})")
        elif takes:
            what = (f"its network takes {takes[0]}x{takes[1]} images and "
                    "its preprocessing does not resize")
        else:
            what = "its network refuses them"
        raise UserError(
            f"{path} cannot run on the data set's {image_size[0]}x"
            f"{image_size[1]} images: {what} ({first_line(e, 200)}). Give "
            "the data that size (--config.data.image_size), or wrap the "
            "network with its input size: python -m ega_tf.convert_teacher "
            "--model=FILE --input_size=S --out=teacher.keras.") from None
