r"""Exports a trained student for deployment, and checks the export.

    python -m ega_tf.export --workdir=runs/ega --format=tflite
    python -m ega_tf.export --workdir=runs/ega --format=tflite --quantize=int8

Reads the run's SavedModel (``saved_model/``, written at the end of
training) and writes ``student.tflite`` (``student_float16.tflite``,
``student_int8.tflite`` when quantised) beside it: uint8 images in, logits
and probabilities out, like the SavedModel. int8 calibrates on 256 of the
run's training images. The test split's top-1 of the exported model is
printed beside the SavedModel's, with the difference.
"""

from __future__ import annotations

import json
import os

from ega_tf import cli
from ega_tf.errors import UserError


def define_flags(flag_values):
    cli.define("string", "workdir", None, "A finished training run's "
               "workdir.", flag_values)
    cli.define("enum", "format", "tflite", "Export format.", flag_values,
               enum_values=["tflite"])
    cli.define("enum", "quantize", None, "float16 (weights) or int8 (weights"
               " and activations, calibrated on training images).",
               flag_values, enum_values=["float16", "int8"])


def main(argv, flag_values):
    import numpy as np

    from ega_tf import config as config_lib
    from ega_tf import serving, training
    from ega_tf import workdir as wd
    workdir = flag_values.workdir
    if len(argv) > 1 or not workdir:
        raise UserError("usage: python -m ega_tf.export --workdir=RUN "
                        "--format=tflite [--quantize=float16|int8]")
    saved = os.path.join(workdir, wd.SAVED_MODEL)
    config_path = os.path.join(workdir, wd.CONFIG)
    if not os.path.isfile(os.path.join(saved, "saved_model.pb")) or \
            not os.path.isfile(config_path):
        raise UserError(f"{workdir!r} has no finished run with an exported "
                        "student (config.json and saved_model/); train one "
                        "with python -m ega_tf.train first.")
    config = config_lib.default_config()
    config.update(wd.read_json(config_path))
    dataset = training.load_dataset(config)
    calibration = None
    if flag_values.quantize == "int8":
        rng = np.random.default_rng(0)
        rows = rng.choice(len(dataset.train), min(256, len(dataset.train)),
                          replace=False)
        images = dataset.train.images
        calibration = images[np.sort(rows)]
    path = os.path.join(workdir, serving.tflite_name(flag_values.quantize))
    serving.export_tflite(saved, path, flag_values.quantize, calibration)
    test_images, labels = dataset.test.images, dataset.test.labels
    reference = serving.top1(serving.load_serving_function(saved),
                             test_images, labels)
    exported = serving.top1(serving.TFLiteStudent(path), test_images, labels)
    report = {"tflite": path, "bytes": os.path.getsize(path),
              "quantize": flag_values.quantize,
              "test_top1_saved_model": reference,
              "test_top1_tflite": exported,
              "difference": exported - reference}
    print(f"{path}: {report['bytes'] / 1e6:.2f} MB; test top-1 "
          f"{exported:.2f} (SavedModel {reference:.2f}, difference "
          f"{exported - reference:+.2f})")
    print(json.dumps(report))


if __name__ == "__main__":
    cli.run(define_flags, main)
