"""A user's own .keras model or SavedModel as a teacher, with declared
preprocessing; models that cannot be teachers are refused before anything
is written."""

import os
import re
import shlex

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from ega_tf import teachers
from ega_tf.core.errors import UserError
from ega_tf.teachers.user_model import wrap
from tests.test_case import ROOT, TestCase


def expected(model, images, mean, std):
    """Resize the shorter side to 40 (bilinear), centre crop 32, normalise:
    what --input_size=32 --crop_pct=0.8 declares."""
    x = tf.image.resize(images.astype(np.float32), (40, 50),
                        antialias=True)[:, 4:36, 9:41] / 255.0
    return model((x - mean) / std).numpy()


class UserModelTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keras.utils.set_random_seed(0)
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        cls.model = keras.Model(inputs, keras.layers.Dense(12)(x),
                                name="mine")
        cls.dir = cls.class_tempdir()
        cls.model.save(cls.dir / "mine.keras")
        cls.model.export(str(cls.dir / "mine_savedmodel"), verbose=False)

    @parameterized.parameters("mine.keras", "mine_savedmodel")
    def test_declared_preprocessing(self, kind):
        mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
        teacher = wrap(str(self.dir / kind), input_size=32, crop_pct=0.8,
                       mean=mean, std=std)
        images = np.random.default_rng(1).integers(0, 256, (2, 48, 60, 3),
                                                   np.uint8)
        want = expected(self.model, images, np.array(mean), np.array(std))
        np.testing.assert_allclose(teacher(images).numpy(), want, rtol=1e-5,
                                   atol=1e-5)
        self.assertEqual(teachers.metadata(teacher)["embedding_dim"], 12)
        out = str(self.tmp_path() / "t.keras")
        teachers.save(teacher, out)
        if kind == "mine_savedmodel":
            with self.assertRaisesRegex(UserError, "--trust_saved_model"):
                teachers.load(out)
        loaded = teachers.load(out,
                               trust_saved_model=kind == "mine_savedmodel")
        np.testing.assert_allclose(loaded(images).numpy(), want, rtol=1e-5,
                                   atol=1e-5)
        self.assertEqual(loaded.get_layer("backbone").output_shape,
                         (None, 12))

    def test_models_that_cannot_be_teachers_are_refused(self):
        tmp = self.tmp_path()
        with self.assertRaisesRegex(UserError, "Declare the model's input"):
            wrap(str(self.dir / "mine.keras"))
        with self.assertRaisesRegex(UserError, "neither a .keras file"):
            wrap(str(tmp), input_size=32)
        fmap = keras.Model(self.model.input, self.model.layers[1].output)
        fmap.save(tmp / "fmap.keras")
        with self.assertRaisesRegex(UserError, "a teacher needs"):
            wrap(str(tmp / "fmap.keras"), input_size=32)
        # A 28x28 greyscale network cannot take RGB images.
        inputs = keras.Input((28, 28, 1))
        x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inputs))
        keras.Model(inputs, keras.layers.Dense(8)(x)).save(tmp / "mnist.keras")
        with self.assertRaisesRegex(UserError, "3-channel|28x28x3"):
            wrap(str(tmp / "mnist.keras"), input_size=28)
        # A classifier ending in a softmax gives probabilities, not features.
        inputs = keras.Input((None, None, 3))
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x)
                    ).save(tmp / "classifier.keras")
        with self.assertRaisesRegex(UserError, "class probabilities"):
            wrap(str(tmp / "classifier.keras"), input_size=16)


class TeacherFileContractTest(TestCase):

    def test_roundtrip_and_contract(self):
        from ega_tf import students
        tmp = self.tmp_path()
        backbone = students.create("resnet8")
        backbone.name = "backbone"
        pre = teachers.TeacherPreprocess((0.5,) * 3, (0.25,) * 3,
                                         metadata={"family": "test"})
        teacher = teachers.assemble(backbone, pre)
        x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3),
                                              np.uint8)
        again = self.run_model_saving_test(teacher, x, teachers.save,
                                           teachers.load, str(tmp / "t.keras"))
        self.assertEqual(teachers.metadata(again), {"family": "test"})
        self.assertEqual(again.get_layer("backbone").output_shape, (None, 64))
        # A float-input classifier is not a teacher: it would be fed raw
        # 0..255 pixels.
        inputs = keras.Input((32, 32, 3))
        plain = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(
            inputs))
        plain.save(tmp / "plain.keras")
        with self.assertRaisesRegex(UserError, "float32 input.*convert_"
                                    "teacher --model"):
            teachers.load(str(tmp / "plain.keras"))
        # uint8 in, but no preprocessing that says how to normalise.
        inputs = keras.Input((None, None, 3), dtype="uint8")
        x = keras.layers.Rescaling(1 / 255)(inputs)
        keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(
            tmp / "bare.keras")
        with self.assertRaisesRegex(UserError, "no ega_tf preprocessing"):
            teachers.load(str(tmp / "bare.keras"))

    def test_missing_truncated_and_text_files(self):
        tmp = self.tmp_path()
        with self.assertRaisesRegex(UserError, "does not exist.*pretrain"):
            teachers.load(str(tmp / "missing.keras"))
        (tmp / "notes.keras").write_text("not a model")
        with self.assertRaisesRegex(UserError, "not a valid Keras file"):
            teachers.load(str(tmp / "notes.keras"))
        from ega_tf import students
        net = students.create("resnet8")
        net.name = "backbone"
        teachers.save(teachers.assemble(net, teachers.TeacherPreprocess()),
                      str(tmp / "good.keras"))
        blob = (tmp / "good.keras").read_bytes()
        (tmp / "cut.keras").write_bytes(blob[:len(blob) // 2])
        with self.assertRaisesRegex(UserError, "not a valid Keras file"):
            teachers.load(str(tmp / "cut.keras"))


class DocumentedCommandsTest(TestCase):

    def test_readme_and_build_md_model_commands_run_as_written(self):
        """Every `convert_teacher --model=` command of README.md and
        BUILD.md, on a small model saved under the names they use."""
        lines = []
        for doc in ("README.md", "BUILD.md"):
            text = (ROOT / doc).read_text().replace("\\\n", " ")
            lines += re.findall(r"python -m ega_tf\.convert_teacher "
                                r"--model=[^\n]*", text)
        self.assertGreaterEqual(len(lines), 3, lines)
        tmp = self.tmp_path()
        inputs = keras.Input((None, None, 3))
        x = keras.layers.GlobalAveragePooling2D()(
            keras.layers.Conv2D(4, 3, strides=4)(inputs))
        model = keras.Model(inputs, x, name="encoder")
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            for line in lines:
                args = shlex.split(line)[3:]  # after python -m module
                path = next(a for a in args if a.startswith("--model="))
                name = path.split("=", 1)[1]
                if name.endswith(".keras"):
                    model.save(name)
                else:
                    model.export(name, verbose=False)
                with self.subTest(line=line):
                    self.assertSucceeded(self.run_cli("convert_teacher",
                                                      *args))
                    out = next(a for a in args if a.startswith("--out="))
                    teacher = teachers.load(out.split("=", 1)[1],
                                            trust_saved_model=True)
                    self.assertEqual(teacher(np.zeros(
                        (1, 50, 60, 3), np.uint8)).shape, (1, 4))
        finally:
            os.chdir(cwd)
