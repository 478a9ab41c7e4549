"""The exported SavedModel, served from a fresh TensorFlow-only process;
predict's bad input."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ega_tf import students
from ega_tf.core.errors import UserError
from ega_tf.deploy import formats, serving
from ega_tf.students.head import build_student
from tests.test_case import TestCase

_SERVE = """
import sys, numpy as np, tensorflow as tf
f = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = f(images=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], out["logits"].numpy())
np.save(sys.argv[4], out["probabilities"].numpy())
# The SavedModel needs TensorFlow alone, none of ega_tf's code. (Importing
# TensorFlow 2.21 loads Keras by itself, so that cannot be asserted.)
assert not [m for m in sys.modules if m.split(".")[0] == "ega_tf"]
"""


class ExportTest(TestCase):

    def test_export_serves_in_fresh_process_without_ega_tf(self):
        tmp = self.tmp_path()
        keras.utils.set_random_seed(1)
        student = build_student(students.create("resnet8"), 10, 32)
        # Non-trivial BN statistics, so inference mode matters.
        for layer in student.get_layer("resnet8").layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(np.random.rand(
                    *layer.moving_mean.shape))
                layer.moving_variance.assign(1 + np.random.rand(
                    *layer.moving_variance.shape))
        images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3),
                                                   dtype=np.uint8)
        want = student(images, training=False)["logits"].numpy()
        path = str(tmp / "saved_model")
        serving.export_student(student, path, [f"c{i}" for i in range(10)])
        np.save(tmp / "images.npy", images)
        r = self.run_subprocess(["-c", _SERVE, path, tmp / "images.npy",
                                 tmp / "l.npy", tmp / "p.npy"], cwd=tmp)
        self.assertSucceeded(r)
        np.testing.assert_allclose(np.load(tmp / "l.npy"), want, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(np.load(tmp / "p.npy").sum(1), 1.0,
                                   rtol=1e-5)
        self.assertEqual(serving.load_class_names(path)[3], "c3")
        # Re-export over an existing one replaces it whole, no temp dirs.
        serving.export_student(student, path)
        self.assertEqual(sorted(os.listdir(tmp)),
                         ["images.npy", "l.npy", "p.npy", "saved_model"])
        self.assertIsNone(serving.load_class_names(path))


class PredictInputTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_tempdir()
        student = build_student(students.create("resnet8"), 3, 8)
        serving.export_student(student, str(cls.dir / "sm"), ["a", "b", "c"])

    def test_bad_input_gets_one_line(self):
        tmp = self.tmp_path()
        (tmp / "notes.txt").write_text("not an image")
        import tensorflow as tf
        png = tmp / "x.png"
        png.write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8))
                        .numpy())
        model = f"--model={self.dir / 'sm'}"
        for args, message in (
                ([model, str(tmp / "notes.txt")], "is not an image"),
                ([model, str(tmp)], "is a directory; pass image files"),
                ([model, str(tmp / "absent.png")], "does not exist"),
                ([model, "--top_k=-1", str(png)], "--top_k must be at "
                 "least 1"),
                ([f"--model={tmp}", str(png)], "is not a SavedModel"),
                ([model], "usage: python -m ega_tf.predict")):
            with self.subTest(args=args):
                self.assertOneLineError(self.run_cli("predict", *args),
                                        message)
        r = self.run_cli("predict", model, "--top_k=2", png)
        self.assertSucceeded(r)
        self.assertRegex(r.stdout, r"x.png: [abc] \d+\.\d%, [abc] \d+\.\d%")


# A TFLite file run by LiteRT in a fresh process with neither TensorFlow
# nor ega_tf imported.
_TFLITE = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
run = Interpreter(model_path=sys.argv[1]).get_signature_runner(
    "serving_default")
np.save(sys.argv[3], run(images=np.load(sys.argv[2]))["logits"])
assert not [m for m in sys.modules
            if m.split(".")[0] in ("ega_tf", "tensorflow")]
"""

# An ONNX file run by ONNX Runtime in a fresh process, likewise.
_ONNX = """
import json, sys, numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1],
                               providers=["CPUExecutionProvider"])
out = dict(zip([o.name for o in session.get_outputs()],
               session.run(None, {"images": np.load(sys.argv[2])})))
np.save(sys.argv[3], out["logits"])
np.save(sys.argv[4], out["probabilities"])
print(json.dumps([[i.name, i.type, i.shape] for i in session.get_inputs()]))
assert not [m for m in sys.modules
            if m.split(".")[0] in ("ega_tf", "tensorflow")]
"""


class DeploymentTest(TestCase):
    """python -m ega_tf.export on a finished run's SavedModel: TFLite files
    run by LiteRT, an ONNX file run by ONNX Runtime, each also in a fresh
    process without TensorFlow, against the SavedModel."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from ega_tf import config as config_lib
        from ega_tf import data
        cls.work = cls.class_tempdir()
        keras.utils.set_random_seed(2)
        student = build_student(students.create("resnet8"), 10, 32)
        serving.export_student(student, str(cls.work / "saved_model"))
        c = config_lib.default_config()
        c.dataset, c.student = "digits", "resnet8"
        (cls.work / "config.json").write_text(c.to_json())
        cls.digits = data.load("digits")
        cls.want = serving.logits(serving.load_serving_function(
            str(cls.work / "saved_model")), cls.digits.test.images)
        cls.reference = serving.top1(cls.want, cls.digits.test.labels)

    def export(self, *args):
        """The export command's report; the exported model's test logits
        as its runtime computes them here."""
        r = self.run_cli("export", f"--workdir={self.work}", *args)
        self.assertSucceeded(r)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        fmt = "onnx" if "--format=onnx" in args else "tflite"
        path = report[fmt]
        runtime = (formats.ONNXStudent if fmt == "onnx"
                   else formats.TFLiteStudent)(path)
        got = serving.logits(runtime, self.digits.test.images)
        top1 = serving.top1(got, self.digits.test.labels)
        self.assertAlmostEqual(report["test_top1_saved_model"],
                               self.reference, places=6)
        self.assertAlmostEqual(report[f"test_top1_{fmt}"], top1, places=6)
        self.assertAlmostEqual(report["difference"], top1 - self.reference,
                               places=6)
        self.assertAlmostEqual(report["max_logit_difference"],
                               np.abs(got - self.want).max(), places=5)
        self.assertAlmostEqual(report["max_logit_difference_relative"],
                               self.rel_err(got, self.want), places=6)
        self.assertIn(f"difference {top1 - self.reference:+.2f}", r.stdout)
        return report, got

    def test_tflite_variants_and_their_accuracy_beside_the_saved_model(self):
        for quantize, tol in ((None, 1e-4), ("float16", 2e-2),
                              ("int8", None)):
            with self.subTest(quantize=quantize):
                report, got = self.export(
                    *([f"--quantize={quantize}"] if quantize else []))
                self.assertEqual(report["tflite"], str(
                    self.work / formats.tflite_name(quantize)))
                if tol:
                    self.assertLess(self.rel_err(got, self.want), tol)
        # The float32 file in a fresh process, LiteRT alone.
        tmp = self.tmp_path()
        np.save(tmp / "x.npy", self.digits.test.images[:8])
        r = self.run_subprocess(["-c", _TFLITE, self.work / "student.tflite",
                                 tmp / "x.npy", tmp / "y.npy"], cwd=tmp)
        self.assertSucceeded(r)
        self.assertLess(self.rel_err(np.load(tmp / "y.npy"), self.want[:8]),
                        1e-4)
        r = self.run_cli("export", f"--workdir={self.work}/none")
        self.assertOneLineError(r, "has no finished run")

    def test_onnx_in_onnx_runtime_in_a_fresh_process(self):
        report, got = self.export("--format=onnx")
        path = self.work / formats.ONNX_NAME
        self.assertEqual(report["onnx"], str(path))
        self.assertLess(self.rel_err(got, self.want), 1e-4)
        tmp = self.tmp_path()
        images = self.digits.test.images[:8]
        np.save(tmp / "x.npy", images)
        r = self.run_subprocess(["-c", _ONNX, path, tmp / "x.npy",
                                 tmp / "l.npy", tmp / "p.npy"], cwd=tmp)
        self.assertSucceeded(r)
        (name, dtype, shape), = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((name, dtype, shape[1:]),
                         ("images", "tensor(uint8)", [32, 32, 3]))
        want = serving.load_serving_function(str(self.work / "saved_model"))(
            images=tf.constant(images))
        self.assertLess(self.rel_err(np.load(tmp / "l.npy"),
                                     want["logits"]), 1e-4)
        np.testing.assert_allclose(np.load(tmp / "p.npy"),
                                   want["probabilities"], atol=1e-6)
        r = self.run_cli("export", f"--workdir={self.work}",
                         "--format=onnx", "--quantize=int8")
        self.assertOneLineError(r, "--quantize applies to --format=tflite")

    @pytest.mark.slow  # 12 s: ShuffleNet's conversion
    def test_grouped_convolutions_convert_to_onnx(self):
        """ShuffleNet's grouped convolutions run on CPU as XLA-marked
        functions, which tf2onnx cannot convert until they are inlined."""
        tmp = self.tmp_path()
        student = build_student(students.create("ShuffleV1"), 10, 32)
        serving.export_student(student, str(tmp / "sm"))
        formats.export_onnx(str(tmp / "sm"), str(tmp / "s.onnx"))
        images = self.digits.test.images[:8]
        want = serving.load_serving_function(str(tmp / "sm"))(
            images=tf.constant(images))["logits"]
        got = formats.ONNXStudent(str(tmp / "s.onnx"))(images=images)
        self.assertLess(self.rel_err(got["logits"], want), 1e-4)
        self.assertEqual(sorted(os.listdir(tmp)), ["s.onnx", "sm"])

    def test_a_missing_runtime_names_the_extra(self):
        from unittest import mock
        for module, call in (
                ("tf2onnx", lambda: formats.export_onnx("sm", "s.onnx")),
                ("onnxruntime", lambda: formats.ONNXStudent("s.onnx")),
                ("ai_edge_litert.interpreter",
                 lambda: formats.TFLiteStudent("s.tflite"))):
            with self.subTest(module=module), \
                    mock.patch.dict("sys.modules", {module: None}):
                with self.assertRaisesRegex(UserError, r"needs \w+, the "
                                            r"\[deploy\] extra: pip install"):
                    call()
