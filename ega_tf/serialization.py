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


def load_user_file(path, what, hint=""):
    """The model in a user's ``.keras`` file, or one ``UserError`` line
    saying what is wrong with the file (``what`` names it: "Student",
    "Model file"; ``hint`` is appended to an unreadable file's message)."""
    import os
    import zipfile

    from ega_tf.errors import UserError, first_line
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{what} {path!r} is not a valid Keras file: a "
                        ".keras file is a zip archive, and this one is not "
                        "(truncated, or another format renamed).")
    try:
        return load_model(path, compile=False)
    except Exception as e:  # zip/h5/deserialisation errors
        raise UserError(f"{what} {path!r} is not a valid Keras file "
                        f"({first_line(e)}).{hint}") from None
