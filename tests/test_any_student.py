"""Any network as a student: a user's .keras model, a module:function
factory and a keras.applications network (slow) each distil on digits and
export a SavedModel that a fresh process serves; keras.applications inputs are
normalised as their own preprocess_input does; bad students get one line;
the whole flow (resume, two replicas, TFLite int8, a grid with pictures) on
MobileNetV3Small (slow)."""

import importlib
import json
import os
import sys

import keras
import numpy as np
import pytest

from ega_tf import data, students
from ega_tf.students.head import build_student
from tests.test_case import TestCase, history_rows, pixel_teacher
from tools.synthetic import write_image_folder

# A factory module of the user's, importable from the directory it is in.
_FACTORY = '''
import keras


def small_cnn(input_shape):
    """Images (0-255) -> a feature map, which the student pools."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, x)
'''

# Every exported student served by a process that does not import ega_tf:
# its test top-1.
_SERVE_ALL = """
import json, sys, numpy as np, tensorflow as tf
images, labels = np.load(sys.argv[1]), np.load(sys.argv[2])
out = {}
for path in sys.argv[3:]:
    f = tf.saved_model.load(path).signatures["serving_default"]
    logits = np.concatenate([f(images=tf.constant(images[i:i + 128]))[
        "logits"].numpy() for i in range(0, len(images), 128)])
    out[path] = 100 * float(np.mean(logits.argmax(1) == labels))
assert not [m for m in sys.modules if m.split(".")[0] == "ega_tf"]
print(json.dumps(out))
"""


def user_keras_model(path, input_size=32):
    """A classifier of the user's: standardised input, conv features, a
    named feature layer, then logits."""
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    keras.Model(inputs, keras.layers.Dense(10, name="logits")(x)).save(path)
    return str(path)


class AnyStudentTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_tempdir()
        cls.teacher = pixel_teacher(cls.dir / "teacher.keras")

    def train(self, *args):
        return self.run_cli("train", "--config=configs/digits.py",
                            f"--teacher={self.teacher}", "--epochs=1", *args)

    def test_a_file_and_a_factory_distil_on_digits_and_serve_elsewhere(self):
        tmp = self.tmp_path()
        (tmp / "my_students.py").write_text(_FACTORY)
        sys.path.insert(0, str(tmp))
        self.addCleanup(sys.path.remove, str(tmp))
        model = user_keras_model(tmp / "mine.keras")
        results = self.distil_and_serve(tmp, {
            "mine": [f"--student={model}",
                     "--config.student_feature_layer=features",
                     "--config.student_input.mean=(0.5,0.5,0.5)",
                     "--config.student_input.std=(0.25,0.25,0.25)"],
            "small_cnn": ["--student=my_students:small_cnn"],
        })
        self.assertEqual(results["mine"]["student_params"],
                         3 * 3 * 3 * 12 + 12 + 12 * 256 + 256 + 256 * 10
                         + 10)  # its features, then the student's heads
        # A default workdir is named by the file's and function's names.
        from ega_tf import config as config_lib
        from ega_tf.training import build
        c = config_lib.default_config()
        c.dataset, c.student, c.distill = "digits", model, "none"
        self.assertEqual(build.default_workdir(config_lib.resolve(c)),
                         "runs/digits_mine_none_s0")

    @pytest.mark.slow  # an ImageNet-shaped network, trained then served
    def test_a_keras_applications_network_distils_and_serves_elsewhere(self):
        self.distil_and_serve(self.tmp_path(), {
            "MobileNetV3Small": [
                "--student=keras.applications.MobileNetV3Small"]})

    def distil_and_serve(self, tmp, forms):
        """Trains one epoch of each form (label -> train flags), then one
        process that never imports ega_tf serves every SavedModel and must
        give each run's test top-1. Returns {label: results.json}."""
        results = {}
        for label, args in forms.items():
            with self.subTest(student=label):
                r = self.train(*args, f"--workdir={tmp}/{label}")
                self.assertSucceeded(r)
                results[label] = json.loads((tmp / label /
                                             "results.json").read_text())
                self.assertEqual(results[label]["epochs"], 1)
                self.assertIn("node", history_rows(tmp / label)[0])
        digits = data.load("digits")
        np.save(tmp / "x.npy", digits.test.images)
        np.save(tmp / "y.npy", digits.test.labels)
        r = self.run_subprocess(
            ["-c", _SERVE_ALL, tmp / "x.npy", tmp / "y.npy",
             *(tmp / label / "saved_model" for label in forms)], cwd=tmp)
        self.assertSucceeded(r)
        served = json.loads(r.stdout.strip().splitlines()[-1])
        for label in forms:
            self.assertAlmostEqual(
                served[str(tmp / label / "saved_model")],
                results[label]["test_top1_last"], places=4, msg=label)
        return results

    @pytest.mark.slow  # builds four ImageNet-sized networks
    def test_keras_applications_inputs_are_their_preprocess_input(self):
        self.check_inputs(("VGG16", "ResNet50V2", "DenseNet121"))

    def test_mobilenet_v3_input_is_its_own_rescaling(self):
        self.check_inputs(("MobileNetV3Small",))

    def test_batchnorm_follows_the_recipe_unless_the_model_is_yours(self):
        from ega_tf.nn.layers import batchnorm_layers

        def momenta(model):
            return {layer.momentum for layer in batchnorm_layers(model)}
        net, _ = students.build("keras.applications.MobileNetV3Small",
                                (32, 32, 3))
        self.assertEqual(momenta(net), {0.9})  # keras's own: 0.999
        self.assertEqual(students.parse(
            "keras.applications.MobileNetV3Small").default_lr, 0.01)
        tmp = self.tmp_path()
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.BatchNormalization(momentum=0.99)(
            keras.layers.Rescaling(1 / 255)(inputs))
        keras.Model(inputs, x).save(tmp / "bn.keras")
        mine, inp = students.build(str(tmp / "bn.keras"), (32, 32, 3))
        self.assertEqual(momenta(mine), {0.99})
        self.assertEqual(inp, students.sources.RAW_PIXELS)
        mine, _ = students.build(str(tmp / "bn.keras"), (32, 32, 3),
                                 bn_momentum=0.5)
        self.assertEqual(momenta(mine), {0.5})

    def check_inputs(self, names):
        """The student's normalisation layers, on uint8 images, give what
        the network's own preprocess_input gives (caffe: BGR and ImageNet
        means; tf: [-1, 1]; torch: ImageNet mean/std; identity when the
        network rescales inside)."""
        images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3),
                                                   np.uint8)
        for name in names:
            with self.subTest(network=name):
                fn = getattr(keras.applications, name)
                backbone, inp = students.build(
                    f"keras.applications.{name}", (32, 32, 3))
                student = build_student(backbone, 10, 8, mean=inp.mean,
                                        std=inp.std, bgr=inp.bgr)
                normalise = keras.Model(student.input,
                                        student.get_layer("normalize").output)
                want = importlib.import_module(fn.__module__).preprocess_input(
                    images.astype(np.float32))
                np.testing.assert_allclose(normalise(images), want,
                                           rtol=1e-5, atol=1e-4)

    def test_bad_students_get_one_line(self):
        tmp = self.tmp_path()
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.GlobalAveragePooling2D()(
            keras.layers.Conv2D(4, 3)(inputs))
        keras.Model(inputs, keras.layers.Dense(10, activation="softmax",
                                               name="probs")(x)).save(
            tmp / "probs.keras")
        first = keras.Input((3, 32, 32))
        keras.Model(first, keras.layers.Flatten()(first)).save(
            tmp / "first.keras")
        (tmp / "text.keras").write_text("not a model")
        write_image_folder(tmp / "small", 4, 2)
        work = f"--workdir={tmp}/w"
        for args, message in (
                ([f"--student={tmp}/probs.keras"], "outputs class "
                 "probabilities (softmax). Name the layer that gives its "
                 "features: --config.student_feature_layer="),
                ([f"--student={tmp}/first.keras"], "that is channels-first"),
                ([f"--student={tmp}/text.keras"], "is not a valid Keras file"),
                ([f"--student={tmp}/absent.keras"], "does not exist"),
                (["--student=keras.applications.MobileNetV9"],
                 "Valid names: ConvNeXtBase"),
                (["--student=no_such_module:net"], "cannot import"),
                ([f"--student={tmp}/probs.keras",
                  "--config.student_feature_layer=nope"], "has no layer "
                 "'nope'"),
                (["--student=keras.applications.MobileNetV3Small",
                  f"--dataset=folder:{tmp}/small", "--batch_size=4",
                  "--config.data.image_size=16"],
                 "cannot take 16x16 images: Input size must be at least "
                 "32x32")):
            with self.subTest(args=args):
                self.assertOneLineError(self.train(*args, work), message)
        self.assertFalse((tmp / "w").exists())

    @pytest.mark.slow
    def test_mobilenet_v3_through_the_whole_flow(self):
        """Resume (bit for bit, this machine), two replicas, TFLite int8,
        a grid with pictures beside a zoo student."""
        from ega_tf import config as config_lib
        from ega_tf.training import loop
        tmp = self.tmp_path()
        net = "keras.applications.MobileNetV3Small"
        c = config_lib.default_config()
        c.update(dict(dataset="digits", student=net, teacher=self.teacher,
                      epochs=2, labeled_fraction=0.1, export=True,
                      checkpoint_every_steps=10))
        c = config_lib.resolve(c)
        whole = loop.run(c, str(tmp / "whole"), verbose=0)

        class Crash(Exception):
            pass

        def crash(epoch, step, logs):
            if (epoch, step) == (1, 5):
                raise Crash
        with self.assertRaises(Crash):
            loop.run(c, str(tmp / "k"), verbose=0, on_step=crash)
        again = loop.run(c, str(tmp / "k"), verbose=0)
        self.assertEqual(history_rows(tmp / "whole"), history_rows(tmp / "k"))
        self.assertEqual(again["test_top1_last"], whole["test_top1_last"])
        r = self.train(f"--student={net}", "--config.export=false",
                       "--config.distribute.strategy=mirrored",
                       "--config.distribute.cpu_replicas=2",
                       f"--workdir={tmp}/two")
        self.assertSucceeded(r)
        self.assertIn("Strategy mirrored: 2 replica(s)", r.stderr)
        r = self.run_cli("export", f"--workdir={tmp}/whole",
                         "--format=tflite", "--quantize=int8")
        self.assertSucceeded(r)
        self.assertTrue(os.path.exists(tmp / "whole" /
                                       "student_int8.tflite"))
        r = self.run_cli("compare", "--config=configs/digits.py",
                         f"--teacher={self.teacher}", "--epochs=1",
                         "--methods=none,ega", "--seeds=0",
                         f"--student=resnet8,{net}",
                         "--config.export=false", "--embedding_points=60",
                         f"--workdir={tmp}/grid")
        self.assertSucceeded(r)
        summary = (tmp / "grid" / "summary.md").read_text()
        self.assertIn("## MobileNetV3Small, labeled fraction 0.1", summary)
        self.assertTrue((tmp / "grid" / "ega_MobileNetV3Small_lf0.1_s0" /
                         "results.json").exists())
