"""The exported student: writing it as a TensorFlow SavedModel, and using
it (``predict_files``; ``logits`` and ``top1`` of any runner with the
SavedModel's signature). ``deploy.formats`` converts it to TFLite and ONNX.

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

from ega_tf.core.errors import UserError
from ega_tf.core.io_utils import atomic_output

CLASS_NAMES_FILE = "class_names.json"


def export_student(student, path, class_names=None):
    """Writes ``student`` (uint8 image -> {"logits", ...}) to ``path``.

    The directory appears complete or not at all; an existing export at
    ``path`` is replaced only once the new one is fully written.
    """
    import keras
    import tensorflow as tf

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


def load_serving_function(model_dir):
    """The ``serving_default`` function of an exported student."""
    import tensorflow as tf
    if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        raise UserError(
            f"{model_dir!r} is not a SavedModel directory (no "
            "saved_model.pb); pass the saved_model/ folder of a training "
            "run.")
    return tf.saved_model.load(model_dir).signatures["serving_default"]


def load_images(paths, size):
    """Decodes image files to uint8 RGB, resized to ``size``; a path that is
    not a readable image file is a UserError naming it."""
    import tensorflow as tf
    out = []
    for p in paths:
        if os.path.isdir(p):
            raise UserError(f"{p!r} is a directory; pass image files "
                            f"(e.g. {os.path.join(p, '*.png')}).")
        if not os.path.isfile(p):
            raise UserError(f"Image {p!r} does not exist.")
        try:
            img = tf.io.decode_image(tf.io.read_file(p), channels=3,
                                     expand_animations=False)
        except (tf.errors.InvalidArgumentError, ValueError):
            raise UserError(f"{p!r} is not an image TensorFlow can decode "
                            "(PNG, JPEG, BMP or GIF).") from None
        img = tf.image.resize(img, size, antialias=True)
        out.append(tf.cast(tf.clip_by_value(tf.round(img), 0, 255),
                           tf.uint8))
    return tf.stack(out)


def predict_files(model_dir, paths, top_k=5):
    """Returns, per image file, a list of (class name, probability)."""
    serve = load_serving_function(model_dir)
    size = serve.structured_input_signature[1]["images"].shape[1:3]
    probs = serve(images=load_images(paths, size))["probabilities"].numpy()
    names = load_class_names(model_dir)
    top_k = min(top_k, probs.shape[1])
    results = []
    for p in probs:
        order = p.argsort()[::-1][:top_k]
        results.append([(names[i] if names else str(i), float(p[i]))
                        for i in order])
    return results


def logits(serve, images, batch_size=64):
    """[N, K] float32 logits of a serving function (the SavedModel's
    signature, ``TFLiteStudent``, ``ONNXStudent``) on uint8 images."""
    import numpy as np
    return np.concatenate([
        np.asarray(serve(images=images[i:i + batch_size])["logits"],
                   np.float32)
        for i in range(0, len(images), batch_size)])


def top1(logits_, labels):
    """Top-1 (%) of ``logits_`` [N, K] against ``labels`` [N]."""
    import numpy as np
    return 100.0 * float(np.mean(np.argmax(logits_, 1) == labels))
