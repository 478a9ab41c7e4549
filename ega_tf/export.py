"""Exports the student as a TensorFlow SavedModel for serving.

The SavedModel's ``serving_default`` signature takes ``images``: uint8
[N, H, W, 3] at the training resolution (normalisation is inside) and returns
``logits`` and ``probabilities`` [N, K]. It loads with TensorFlow alone:

    m = tf.saved_model.load("saved_model")
    out = m.signatures["serving_default"](images=tf.constant(batch))

``class_names.json`` beside ``saved_model.pb`` lists the label names.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from ega_tf.io_utils import atomic_output

CLASS_NAMES_FILE = "class_names.json"


def export_student(student, path, class_names=None):
    """Writes ``student`` (uint8 image -> {"logits", ...}) to ``path``.

    The directory appears complete or not at all; an existing export at
    ``path`` is replaced only once the new one is fully written.
    """
    h, w = student.input_shape[1:3]
    spec = tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")

    archive = keras.export.ExportArchive()
    archive.track(student)

    def serve(images):
        logits = tf.cast(student(images, training=False)["logits"],
                         tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    archive.add_endpoint("serving_default", serve, input_signature=[spec])
    with atomic_output(path) as tmp:
        archive.write_out(tmp, verbose=False)
        if class_names is not None:
            with open(os.path.join(tmp, CLASS_NAMES_FILE), "w") as f:
                json.dump(list(class_names), f)
    return path


def load_class_names(path):
    f = os.path.join(path, CLASS_NAMES_FILE)
    if not os.path.exists(f):
        return None
    with open(f) as fh:
        return json.load(fh)
