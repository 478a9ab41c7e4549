#!/usr/bin/env python
"""How fast the deployable student answers: per-image latency at batch 1 and
throughput at batch 64, for the SavedModel, each TFLite variant (run by
LiteRT) and ONNX (run by ONNX Runtime).

    python benchmarks/serving.py                       # resnet8x4, 32 px
    python benchmarks/serving.py --student=resnet8 --repeats=50
    python benchmarks/serving.py --student=keras.applications.MobileNetV3Small \
        --classes=10

The student (random weights: speed does not depend on them) is exported as
training exports it, then converted with ``ega_tf.deploy.formats.export_tflite``
(int8 calibrated on random images) and ``export_onnx``. Times are medians
after warm-up; LiteRT uses as many threads as the machine has cores, ONNX
Runtime its default (one per core). Needs the [deploy] extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="resnet8x4",
                    help="any --student of ega_tf.train")
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    from ega_tf.core import runtime
    tf = runtime.import_tensorflow()
    import numpy as np

    from ega_tf import students
    from ega_tf.deploy import formats, serving
    from ega_tf.students.head import build_student

    size = args.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, size, size, 3), np.uint8)
    backbone, inp = students.build(args.student, (size, size, 3))
    student = build_student(backbone, args.classes, 256, mean=inp.mean,
                            std=inp.std, bgr=inp.bgr)

    def timed(fn, batch):
        x = images[:batch]
        fn(x)
        fn(x)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        serving.export_student(student, saved)
        serve = serving.load_serving_function(saved)
        rows.append(("SavedModel", sum(
            os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(saved) for f in files),
            lambda x: serve(images=tf.constant(x))["logits"].numpy()))
        for quantize in formats.QUANTIZATIONS:
            path = os.path.join(tmp, formats.tflite_name(quantize))
            formats.export_tflite(saved, path, quantize, images)
            model = formats.TFLiteStudent(path)
            rows.append((f"TFLite {quantize or 'float32'}",
                         os.path.getsize(path),
                         lambda x, m=model: m(x)["logits"]))
        path = os.path.join(tmp, formats.ONNX_NAME)
        formats.export_onnx(saved, path)
        onnx_model = formats.ONNXStudent(path)
        rows.append(("ONNX float32", os.path.getsize(path),
                     lambda x: onnx_model(x)["logits"]))
        print(f"Student {args.student}, {size} px, {args.classes} classes, "
              f"{os.cpu_count()} CPU cores; median of {args.repeats}")
        print("| format | size (MB) | batch 1 latency (ms) | batch 64 "
              "throughput (img/s) |")
        print("| --- | ---: | ---: | ---: |")
        for name, nbytes, fn in rows:
            print(f"| {name} | {nbytes / 1e6:.2f} | "
                  f"{1000 * timed(fn, 1):.2f} | {64 / timed(fn, 64):.0f} |")


if __name__ == "__main__":
    main()
