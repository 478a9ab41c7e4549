r"""Exports a trained student for deployment, and checks the export.

    python -m ega_tf.export --workdir=runs/ega --format=tflite
    python -m ega_tf.export --workdir=runs/ega --format=tflite --quantize=int8
    python -m ega_tf.export --workdir=runs/ega --format=onnx

Reads the run's SavedModel (``saved_model/``, written at the end of
training) and writes beside it, with the SavedModel's inputs and outputs
(uint8 images in, logits and probabilities out):

- ``--format=tflite``: ``student.tflite`` (``student_float16.tflite``,
  ``student_int8.tflite`` when quantised), for phones and microcontrollers
  (LiteRT). int8 calibrates on 256 of the run's training images.
- ``--format=onnx``: ``student.onnx`` (opset 17), for ONNX Runtime, TensorRT,
  OpenVINO and other runtimes outside TensorFlow.

The exported model then classifies the test split, run by its own runtime
(LiteRT, ONNX Runtime): its top-1 is printed beside the SavedModel's, with
the difference and the largest difference of the logits.
"""

from __future__ import annotations

import json
import os

from ega_tf import cli
from ega_tf.core.errors import UserError
from ega_tf.deploy.formats import FORMATS



def define_flags(flag_values):
    cli.define("string", "workdir", None, "A finished training run's "
               "workdir.", flag_values)
    cli.define("enum", "format", "tflite", "Export format: tflite (LiteRT) "
               "or onnx.", flag_values, enum_values=list(FORMATS))
    cli.define("enum", "quantize", None, "tflite only: float16 (weights) or "
               "int8 (weights and activations, calibrated on training "
               "images).", flag_values, enum_values=["float16", "int8"])


def main(argv, flag_values):
    import numpy as np

    from ega_tf import config as config_lib
    from ega_tf.deploy import formats
    from ega_tf.training import build
    from ega_tf.training import workdir as wd
    workdir, fmt = flag_values.workdir, flag_values.format
    if len(argv) > 1 or not workdir:
        raise UserError("usage: python -m ega_tf.export --workdir=RUN "
                        "[--format=tflite [--quantize=float16|int8] | "
                        "--format=onnx]")
    if fmt == "onnx" and flag_values.quantize:
        raise UserError("--quantize applies to --format=tflite; an ONNX "
                        "model is written in float32 (quantise it with ONNX "
                        "Runtime's tools).")
    saved = os.path.join(workdir, wd.SAVED_MODEL)
    config_path = os.path.join(workdir, wd.CONFIG)
    if not os.path.isfile(os.path.join(saved, "saved_model.pb")) or \
            not os.path.isfile(config_path):
        raise UserError(f"{workdir!r} has no finished run with an exported "
                        "student (config.json and saved_model/); train one "
                        "with python -m ega_tf.train first.")
    config = config_lib.default_config()
    config.update(wd.read_json(config_path))
    dataset = build.load_dataset(config)
    calibration = None
    if flag_values.quantize == "int8":  # 256 training images, fixed
        rows = np.random.default_rng(0).choice(
            len(dataset.train), min(256, len(dataset.train)), replace=False)
        calibration = dataset.train.images[np.sort(rows)]
    report = formats.export(saved, fmt, flag_values.quantize, calibration,
                            test=(dataset.test.images, dataset.test.labels))
    path, top1 = report[fmt], report["test_top1_saved_model"]
    exported = report[f"test_top1_{fmt}"]
    print(f"{path}: {report['bytes'] / 1e6:.2f} MB; test top-1 "
          f"{exported:.2f} (SavedModel {top1:.2f}, difference "
          f"{exported - top1:+.2f}); logits within "
          f"{report['max_logit_difference']:.1e} of the SavedModel's "
          f"({report['max_logit_difference_relative']:.1e} of the largest)")
    print(json.dumps(report))


if __name__ == "__main__":
    cli.run(define_flags, main)
