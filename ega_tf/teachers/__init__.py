"""Teachers: frozen models mapping uint8 images to an embedding.

A teacher file is a ``.keras`` model built as
``uint8 image -> TeacherPreprocess -> backbone -> [N, F] embedding``:
the preprocessing its checkpoint family expects travels inside it, together
with metadata (family, source, embedding width), and the network itself is
the sub-model named ``backbone`` (``teacher.get_layer("backbone")``).
"""

from __future__ import annotations

import json
import os

import keras
from keras import layers, ops

from ega_tf import serialization
from ega_tf.io_utils import atomic_output


@keras.saving.register_keras_serializable(package="ega_tf")
class TeacherPreprocess(layers.Layer):
    """uint8 (or float in [0, 255]) images -> the backbone's input.

    Either resizes to ``image_size`` (H, W), or, torchvision style, resizes
    the shorter side to ``resize_shorter`` (the longer side to
    ``int(resize_shorter * long / short)``) and centre-crops ``crop_size``;
    then scales to [0, 1] and normalises with ``mean`` / ``std``.
    ``interpolation`` is any ``tf.image.resize`` method (``antialias``
    filters when shrinking), or ``pil_bicubic`` / ``pil_bilinear``: Pillow's
    resampling, as torchvision's ``Resize`` applies it to PIL images (see
    ``pil_resize``). ``crop_fraction`` (SimCLR style, with ``image_size``)
    first centre-crops a square of ``rint(crop_fraction * shorter side)``
    pixels, offset ``(side - crop + 1) // 2``; ``clip`` clips the [0, 1]
    pixels after resizing (bicubic overshoots). ``metadata`` is a JSON-able
    dict describing where the teacher came from.
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                 image_size=None, interpolation="bilinear", metadata=None,
                 resize_shorter=None, crop_size=None, antialias=False,
                 crop_fraction=None, clip=False, **kwargs):
        super().__init__(**kwargs)
        if image_size and resize_shorter:
            raise ValueError("Give image_size or resize_shorter, not both.")
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = tuple(image_size) if image_size else None
        self.resize_shorter = resize_shorter
        self.crop_size = crop_size
        self.interpolation = interpolation
        self.antialias = bool(antialias)
        self.crop_fraction = crop_fraction
        self.clip = bool(clip)
        self.metadata = dict(metadata or {})

    def _resize(self, x, size):
        import tensorflow as tf
        if self.interpolation.startswith("pil_"):
            from ega_tf.teachers import pil_resize
            return pil_resize.resize(x, size, self.interpolation[4:])
        return tf.image.resize(x, size, method=self.interpolation,
                               antialias=self.antialias)

    def _resize_and_crop(self, x):
        import tensorflow as tf
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        short, side = tf.minimum(h, w), self.resize_shorter
        long_new = tf.cast(side * tf.maximum(h, w) / short, tf.int32)
        new_h = tf.where(h <= w, side, long_new)
        new_w = tf.where(h <= w, long_new, side)
        x = self._resize(x, tf.stack([new_h, new_w]))
        if self.crop_size:
            c = self.crop_size
            # torchvision: top = int(round((H - c) / 2.0)).
            top = tf.cast(tf.round((new_h - c) / 2), tf.int32)
            left = tf.cast(tf.round((new_w - c) / 2), tf.int32)
            x = x[:, top:top + c, left:left + c, :]
        return x

    def _center_fraction(self, x):
        import tensorflow as tf
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        side = tf.cast(tf.math.rint(self.crop_fraction * tf.cast(
            tf.minimum(h, w), tf.float32)), tf.int32)
        top, left = (h - side + 1) // 2, (w - side + 1) // 2
        return x[:, top:top + side, left:left + side, :]

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.crop_fraction:
            x = self._center_fraction(x)
        if self.image_size is not None:
            x = self._resize(x, self.image_size)
        elif self.resize_shorter:
            x = self._resize_and_crop(x)
        x = x / 255.0
        if self.clip:
            x = ops.clip(x, 0.0, 1.0)
        return (x - ops.array(self.mean, "float32")) / ops.array(
            self.std, "float32")

    def compute_output_shape(self, input_shape):
        if self.image_size is not None:
            return (input_shape[0], *self.image_size, input_shape[-1])
        if self.crop_size:
            return (input_shape[0], self.crop_size, self.crop_size,
                    input_shape[-1])
        if self.resize_shorter:
            return (input_shape[0], None, None, input_shape[-1])
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "image_size": self.image_size,
                "interpolation": self.interpolation,
                "resize_shorter": self.resize_shorter,
                "crop_size": self.crop_size, "antialias": self.antialias,
                "crop_fraction": self.crop_fraction, "clip": self.clip,
                "metadata": self.metadata}


@keras.saving.register_keras_serializable(package="ega_tf")
class FeatureStandardize(layers.Layer):
    """Fixed per-feature ``(f - mean) / std``, statistics stored, not trained.

    Pooled ReLU features are all positive and share a large common component;
    left in, it makes every pair of teacher embeddings look alike (EGA's edge
    matrix E_t close to all ones). Statistics measured once on the unlabeled
    training images remove it.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, features):
        f = ops.cast(features, "float32")
        return (f - ops.array(self.mean, "float32")) / ops.array(
            self.std, "float32")

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def assemble(backbone, preprocess, name="teacher", standardize=None):
    """The teacher model: uint8 image -> preprocess -> ``backbone``
    (-> ``standardize``, a ``FeatureStandardize``, if given)."""
    if backbone.name != "backbone":
        raise ValueError("The teacher's network must be a model named "
                         f"'backbone'; got {backbone.name!r}.")
    inputs = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    out = backbone(preprocess(inputs))
    if standardize is not None:
        out = standardize(out)
    return keras.Model(inputs, out, name=name)


def metadata(teacher):
    for layer in teacher.layers:
        if isinstance(layer, TeacherPreprocess):
            return dict(layer.metadata)
    return {}


def save(teacher, path):
    """Writes ``teacher`` to ``path`` (a ``.keras`` file) atomically."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"A teacher file must end in .keras; got {path!r}.")
    with atomic_output(path, suffix=".keras") as tmp:
        teacher.save(tmp)


def _saved_model_refs(path):
    """The SavedModel directories a .keras file calls through TFSMLayer."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return []
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


def load(path, trust_saved_model=False):
    """Loads a teacher ``.keras`` file and checks it maps images to [N, F].

    A teacher made from a SavedModel (``convert_teacher --model=DIR``) calls
    that directory; Keras loads such files only when trusted, so pass
    ``trust_saved_model=True`` (``--trust_saved_model``) for files you made.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Teacher file {path!r} does not exist. Make one with "
            "`python -m ega_tf.pretrain --dataset=digits --out=teacher.keras` "
            "(see README.md) or convert a published checkpoint (BUILD.md).")
    if not str(path).endswith(".keras"):
        raise ValueError(f"Expected a .keras teacher file, got {path!r}.")
    refs = _saved_model_refs(path)
    if refs and not trust_saved_model:
        raise ValueError(
            f"Teacher {path!r} calls the SavedModel {refs[0]!r}, which can "
            "run arbitrary TensorFlow ops; if you made it, rerun with "
            "--trust_saved_model.")
    try:
        teacher = serialization.load_model(path, compile=False,
                                           safe_mode=not refs)
    except Exception as e:  # zip/h5 errors carry no hint of the file
        raise ValueError(f"Could not read teacher file {path!r}: {e}. Is it "
                         "a complete .keras file written by ega_tf?") from e
    if len(teacher.output_shape) != 2:
        raise ValueError(
            f"Teacher {path!r} outputs shape {teacher.output_shape}; a "
            "teacher must output a [batch, features] embedding.")
    return teacher


def cache_dir():
    return os.path.expanduser(os.environ.get(
        "EGA_TF_CACHE", os.path.join("~", ".cache", "ega_tf", "teachers")))


def load_or_convert(path, fmt=None, allow_pickle=False,
                    trust_saved_model=False):
    """A ``.keras`` teacher as is; any other file is treated as a published
    checkpoint, converted once and cached (keyed by its SHA-256) under
    ``$EGA_TF_CACHE`` (default ``~/.cache/ega_tf/teachers``)."""
    if str(path).endswith(".keras"):
        return load(path, trust_saved_model)
    from ega_tf.teachers import convert
    if not convert.source_files(path):
        raise FileNotFoundError(f"Teacher checkpoint {path!r} does not "
                                "exist.")
    cached = os.path.join(cache_dir(), f"{convert.sha256(path)}.keras")
    if not os.path.exists(cached):
        save(convert.convert(path, fmt, allow_pickle), cached)
    return load(cached)


def describe(teacher):
    meta = metadata(teacher)
    return (f"teacher {teacher.name}: {teacher.count_params():,} params, "
            f"embedding {teacher.output_shape[-1]}, "
            f"{json.dumps(meta, sort_keys=True)}")
