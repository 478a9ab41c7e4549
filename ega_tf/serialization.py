"""Loading ``.keras`` files the project writes, in any process.

Keras rebuilds a saved model by looking up each layer's registered name
(``ega_tf>ClassToken``, ...) in its table of custom objects. A class gets into
that table only when the module defining it is imported, and Keras imports
modules by itself only for its own packages (``keras``, ``keras_hub``). So a
process that loads a teacher without having converted one first would not know
``AttentionPool2D`` or ``ClassToken``. ``CUSTOM_OBJECT_MODULES`` lists every
module that defines a class the project may write into a file, and
``load_model`` imports them all before reading. A test scans the package for
``register_keras_serializable`` and checks this list is complete.
"""

from __future__ import annotations

import importlib

CUSTOM_OBJECT_MODULES = (
    "ega_tf.layers",
    "ega_tf.optimizers",
    "ega_tf.ssl.augment",
    "ega_tf.teachers.clip_resnet",
    "ega_tf.teachers.preprocess",
    "ega_tf.teachers.vit",
)


def register_custom_objects():
    """Imports every module that registers a Keras class of this project."""
    for name in CUSTOM_OBJECT_MODULES:
        importlib.import_module(name)


def load_model(path, **kwargs):
    """``keras.saving.load_model`` with this project's classes registered."""
    import keras
    register_custom_objects()
    return keras.saving.load_model(path, **kwargs)
