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

from ega_tf.io_utils import atomic_output


@keras.saving.register_keras_serializable(package="ega_tf")
class TeacherPreprocess(layers.Layer):
    """uint8 (or float in [0, 255]) images -> the backbone's input.

    Resizes to ``image_size`` (when given) with ``interpolation``, scales to
    [0, 1] and normalises with ``mean`` / ``std``. ``metadata`` is a free
    JSON-able dict describing where the teacher came from.
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                 image_size=None, interpolation="bilinear", metadata=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = tuple(image_size) if image_size else None
        self.interpolation = interpolation
        self.metadata = dict(metadata or {})

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.image_size is not None:
            x = ops.image.resize(x, self.image_size,
                                 interpolation=self.interpolation)
        x = x / 255.0
        return (x - ops.array(self.mean, "float32")) / ops.array(
            self.std, "float32")

    def compute_output_shape(self, input_shape):
        if self.image_size is None:
            return input_shape
        return (input_shape[0], *self.image_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "image_size": self.image_size,
                "interpolation": self.interpolation,
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


def load(path):
    """Loads a teacher ``.keras`` file and checks it maps images to [N, F]."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Teacher file {path!r} does not exist. Make one with "
            "`python -m ega_tf.pretrain --dataset=digits --out=teacher.keras` "
            "(see README.md) or convert a published checkpoint (BUILD.md).")
    if not str(path).endswith(".keras"):
        raise ValueError(f"Expected a .keras teacher file, got {path!r}.")
    try:
        teacher = keras.saving.load_model(path, compile=False)
    except Exception as e:  # zip/h5 errors carry no hint of the file
        raise ValueError(f"Could not read teacher file {path!r}: {e}. Is it "
                         "a complete .keras file written by ega_tf?") from e
    if len(teacher.output_shape) != 2:
        raise ValueError(
            f"Teacher {path!r} outputs shape {teacher.output_shape}; a "
            "teacher must output a [batch, features] embedding.")
    return teacher


def describe(teacher):
    meta = metadata(teacher)
    return (f"teacher {teacher.name}: {teacher.count_params():,} params, "
            f"embedding {teacher.output_shape[-1]}, "
            f"{json.dumps(meta, sort_keys=True)}")
