"""The exported SavedModel, served from a fresh TensorFlow-only process;
predict's bad input."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from ega_tf import serving, students
from ega_tf.distiller import build_student
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


_TFLITE = """
import sys, numpy as np, tensorflow as tf
run = tf.lite.Interpreter(model_path=sys.argv[1]).get_signature_runner(
    "serving_default")
np.save(sys.argv[3], run(images=np.load(sys.argv[2]))["logits"])
assert not [m for m in sys.modules if m.split(".")[0] == "ega_tf"]
"""


class TFLiteTest(TestCase):

    def test_export_and_its_accuracy_beside_the_saved_model(self):
        from ega_tf import config as config_lib
        from ega_tf import data
        work = self.tmp_path()
        student = build_student(students.create("resnet8"), 10, 32)
        serving.export_student(student, str(work / "saved_model"))
        c = config_lib.default_config()
        c.dataset, c.student = "digits", "resnet8"
        (work / "config.json").write_text(c.to_json())
        digits = data.load("digits")
        want = serving.load_serving_function(str(work / "saved_model"))(
            images=tf.constant(digits.test.images))["logits"].numpy()
        reference = 100 * (want.argmax(1) == digits.test.labels).mean()
        for quantize, tol in ((None, 1e-4), ("float16", 2e-2),
                              ("int8", None)):
            with self.subTest(quantize=quantize):
                args = [f"--workdir={work}"] + (
                    [f"--quantize={quantize}"] if quantize else [])
                r = self.run_cli("export", *args)
                self.assertSucceeded(r)
                report = json.loads(r.stdout.strip().splitlines()[-1])
                path = work / serving.tflite_name(quantize)
                self.assertEqual(report["tflite"], str(path))
                got = np.concatenate([
                    serving.TFLiteStudent(str(path))(
                        images=digits.test.images[i:i + 64])["logits"]
                    for i in range(0, 450, 64)])
                top1 = 100 * (got.argmax(1) == digits.test.labels).mean()
                self.assertAlmostEqual(report["test_top1_saved_model"],
                                       reference, places=6)
                self.assertAlmostEqual(report["test_top1_tflite"], top1,
                                       places=6)
                self.assertAlmostEqual(report["difference"],
                                       top1 - reference, places=6)
                self.assertIn(f"difference {top1 - reference:+.2f}",
                              r.stdout)
                if tol:
                    self.assertLess(self.rel_err(got, want), tol)
        # The float32 file runs in a fresh process with TensorFlow alone.
        np.save(work / "x.npy", digits.test.images[:8])
        r = self.run_subprocess(["-c", _TFLITE, work / "student.tflite",
                                 work / "x.npy", work / "y.npy"], cwd=work)
        self.assertSucceeded(r)
        np.testing.assert_allclose(np.load(work / "y.npy"), want[:8],
                                   rtol=1e-4, atol=1e-4)
        r = self.run_cli("export", f"--workdir={work}/none")
        self.assertOneLineError(r, "has no finished run")
