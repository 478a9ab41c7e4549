"""The exported student: writing it as a TensorFlow SavedModel, converting it
to TFLite (run by LiteRT) and ONNX (run by ONNX Runtime), and using it.

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
import warnings

from ega_tf.core.errors import UserError, first_line
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


# ----------------------------------------------------------------- TFLite
QUANTIZATIONS = (None, "float16", "int8")


def tflite_name(quantize=None):
    return f"student{'_' + quantize if quantize else ''}.tflite"


def export_tflite(saved_model_dir, path, quantize=None,
                  representative_images=None):
    """Converts the exported student to TFLite (uint8 image in, logits and
    probabilities out, as the SavedModel). ``quantize``: None (float32),
    ``"float16"`` (weights stored in float16) or ``"int8"`` (weights and
    activations in int8 where TFLite can, calibrated on
    ``representative_images``, uint8 [N, H, W, 3]). Written atomically."""
    import tensorflow as tf

    from ega_tf.core.registry import check_choice
    check_choice("quantize", quantize, QUANTIZATIONS)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=["serving_default"])
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative_images is None:
            raise UserError("int8 quantisation needs representative images.")

        def representative():
            for image in representative_images:
                yield {"images": image[None]}
        converter.representative_dataset = representative
    from ega_tf.core.runtime import filtered_stderr
    with warnings.catch_warnings(), filtered_stderr(("fully_quantize: ",)):
        # int8 calibration runs inside TensorFlow's converter on its own
        # tf.lite.Interpreter, which warns that it is deprecated (the
        # models written here are run by LiteRT: TFLiteStudent), and its
        # quantiser prints its settings on stderr.
        warnings.filterwarnings("ignore", "(?s).*tf.lite.Interpreter is "
                                "deprecated", UserWarning)
        model = converter.convert()
    with atomic_output(path, suffix=".tflite") as tmp:
        with open(tmp, "wb") as f:
            f.write(model)
    return path


DEPLOY_EXTRA = ("the [deploy] extra: pip install -e '.[deploy]' (make "
                "install includes it)")


def _import_deploy(module, what):
    """``module`` of the [deploy] extra, or a UserError naming the extra
    (imported by name: an optional package outside this one)."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module.split('.')[0]}, "
                        f"{DEPLOY_EXTRA}.") from None


class TFLiteStudent:
    """A converted student run by the LiteRT interpreter (``ai-edge-litert``,
    the runtime that replaces ``tf.lite.Interpreter``), called like the
    SavedModel's signature."""

    def __init__(self, path):
        litert = _import_deploy("ai_edge_litert.interpreter",
                                "Running a TFLite model")
        self.interpreter = litert.Interpreter(
            model_path=path, num_threads=os.cpu_count())
        self.runner = self.interpreter.get_signature_runner(
            "serving_default")
        self._first = True

    def __call__(self, images):
        if self._first:
            from ega_tf.core.runtime import filtered_stderr
            self._first = False
            # LiteRT announces its CPU delegate on stderr at the first call.
            with filtered_stderr(
                    ("Created TensorFlow Lite XNNPACK delegate",)):
                return self.runner(images=images)
        return self.runner(images=images)


# ------------------------------------------------------------------- ONNX
ONNX_NAME = "student.onnx"
# Opset 17 runs on ONNX Runtime 1.11+ and TensorRT 8.6+.
ONNX_OPSET = 17


def export_onnx(saved_model_dir, path):
    """Converts the exported student to ONNX with tf2onnx: ``images``
    (uint8 [N, H, W, 3]) in, ``logits`` and ``probabilities`` out, as the
    SavedModel. Written atomically."""
    import logging

    tf2onnx = _import_deploy("tf2onnx", "ONNX export")
    from tf2onnx import tf_loader
    quiet = [logging.getLogger(n) for n in ("tensorflow", "tf2onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:  # tf2onnx's progress, TF1-API deprecation notices
        q.setLevel(logging.ERROR)
    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            saved_model_dir, None, None, tag="serve",
            signatures=["serving_default"], return_tensors_to_rename=True)
        _inline_xla_functions(graph_def)
        with atomic_output(path, suffix=".onnx") as tmp:
            tf2onnx.convert.from_graph_def(
                graph_def, name="student", input_names=inputs,
                output_names=outputs, opset=ONNX_OPSET,
                tensors_to_rename=renames, output_path=tmp)
            # tf2onnx writes what it could convert and logs the rest: a
            # file ONNX Runtime cannot load is not kept.
            try:
                ONNXStudent(tmp)
            except UserError:
                raise
            except Exception as e:
                raise UserError(
                    f"tf2onnx could not convert the student in "
                    f"{saved_model_dir!r} to a model ONNX Runtime loads "
                    f"({first_line(e, 200)}); the errors above name the "
                    "TensorFlow ops it could not convert. Nothing was "
                    "written.") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return path


def _inline_xla_functions(graph_def):
    """Keras runs grouped convolutions (ShuffleNet's) on CPU as functions
    marked for XLA, which TensorFlow's graph optimiser then keeps as calls
    and tf2onnx cannot convert; without the mark they are inlined into
    plain ops like every other layer."""
    marks = ("_XlaMustCompile", "_noinline")
    for nodes in [graph_def.node] + [f.node_def for f in
                                     graph_def.library.function]:
        for node in nodes:
            for mark in marks:
                if mark in node.attr:
                    del node.attr[mark]
    for function in graph_def.library.function:
        for mark in marks:
            if mark in function.attr:
                del function.attr[mark]


class ONNXStudent:
    """An ONNX student run by ONNX Runtime, called like the SavedModel's
    signature."""

    def __init__(self, path):
        ort = _import_deploy("onnxruntime", "Running an ONNX model")
        self.session = ort.InferenceSession(
            path, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images):
        import numpy as np
        out = self.session.run(None, {"images": np.asarray(images)})
        return dict(zip(self.names, out))


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
