"""Loading ``.keras`` files the project writes, in any process.

Keras rebuilds a saved model by looking up each layer's registered name
(``ega_tf>TorchBatchNorm``, ...) in its table of custom objects, and a class
gets into that table only when the module defining it is imported. So each
reader imports the modules of the classes its files may hold before it
reads one: ``load_model`` those of this layer (``ega_tf.nn.layers``, the
optimizer), ``teachers.teacher_file.load`` the teachers' own as well, and
``import ega_tf`` all of them (for Keras's own loader). A test reads every
kind of teacher file in a fresh process and checks that ``import ega_tf``
registered every class the source registers.
"""

from __future__ import annotations


def load_model(path, **kwargs):
    """``keras.saving.load_model`` with ``ega_tf.nn.layers`` and the
    optimizer's classes registered."""
    import keras

    from ega_tf.nn import layers, optimizers  # noqa: F401 (their classes)
    return keras.saving.load_model(path, **kwargs)


def load_user_file(path, what, hint=""):
    """The model in a user's ``.keras`` file, or one ``UserError`` line
    saying what is wrong with the file (``what`` names it: "Student",
    "Model file"; ``hint`` is appended to an unreadable file's message)."""
    import os
    import zipfile

    from ega_tf.core.errors import UserError, first_line
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
