"""The student in other formats, each run by its own runtime: TFLite (run
by LiteRT, float32, float16 or int8) and ONNX (written by tf2onnx, run by
ONNX Runtime), converted from the run's SavedModel (``deploy.serving``);
and the check that an exported file classifies as the SavedModel does
(``export``, what ``python -m ega_tf.export`` runs).

The runtimes come with the ``[deploy]`` extra; without it, one line names
the extra.
"""

from __future__ import annotations

import os
import warnings

from ega_tf.core.errors import UserError, first_line
from ega_tf.core.io_utils import atomic_output
from ega_tf.deploy import serving

FORMATS = ("tflite", "onnx")


def export(saved_model_dir, fmt, quantize=None, calibration=None,
           test=None):
    """Writes the SavedModel in ``saved_model_dir`` as ``fmt`` beside it
    (``student.onnx``, ``student[_float16|_int8].tflite``) and returns
    the report of ``check`` on ``test`` ((uint8 images, labels)), or just
    {fmt: path, "bytes"} without it. ``calibration``: uint8 images for
    int8 quantisation."""
    from ega_tf.core.registry import check_choice
    check_choice("format", fmt, FORMATS)
    if fmt == "onnx" and quantize:
        raise UserError("--quantize applies to --format=tflite; an ONNX "
                        "model is written in float32 (quantise it with ONNX "
                        "Runtime's tools).")
    folder = os.path.dirname(os.path.abspath(saved_model_dir))
    if fmt == "onnx":
        path = export_onnx(saved_model_dir, os.path.join(folder, ONNX_NAME))
        model = ONNXStudent(path)
    else:
        path = export_tflite(saved_model_dir, os.path.join(
            folder, tflite_name(quantize)), quantize, calibration)
        model = TFLiteStudent(path)
    report = {fmt: path, "bytes": os.path.getsize(path),
              "quantize": quantize}
    if test is not None:
        report.update(check(saved_model_dir, model, fmt, *test))
    return report


def check(saved_model_dir, model, fmt, images, labels):
    """``model`` (a ``TFLiteStudent`` or ``ONNXStudent``) against the
    SavedModel on the same images: both top-1s, their difference and the
    largest difference of the logits (absolute, and relative to the
    largest logit)."""
    import numpy as np
    want = serving.logits(serving.load_serving_function(saved_model_dir),
                          images)
    got = serving.logits(model, images)
    top1, exported = serving.top1(want, labels), serving.top1(got, labels)
    diff = float(np.abs(got - want).max())
    return {"test_top1_saved_model": top1, f"test_top1_{fmt}": exported,
            "difference": exported - top1, "max_logit_difference": diff,
            "max_logit_difference_relative": diff / max(
                float(np.abs(want).max()), 1e-12)}


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
