"""What the speed options promise: the clean view's teacher features,
computed once, give the run the uncached path gives; a bfloat16 teacher
stays close; XLA is chosen per device, with the reason logged."""

import numpy as np

from ega_tf import config as config_lib
from ega_tf import data, teachers
from ega_tf.core import runtime
from ega_tf.teachers import teacher_file
from ega_tf.training import build, loop
from tests.test_case import TestCase, history_rows, pixel_teacher


class TeacherCacheTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.teacher = pixel_teacher(cls.class_tempdir() / "t.keras")

    def test_cached_features_give_the_uncached_run(self):
        tmp = self.tmp_path()
        runs = {}
        for cache in ("auto", "none"):
            c = config_lib.default_config()
            c.dataset, c.student, c.teacher = "digits", "resnet8", \
                self.teacher
            c.epochs, c.labeled_fraction, c.export = 1, 0.1, False
            c.data.image_size = 16  # the teacher resizes to its 32
            c.teacher_view, c.teacher_cache = "clean", cache
            with self.assertLogs("absl", "INFO") as logs:
                loop.run(config_lib.resolve(c), str(tmp / cache),
                         verbose=0)
            runs[cache] = history_rows(tmp / cache)
            cached = "computed once" in " ".join(logs.output)
            self.assertEqual(cached, cache == "auto")
        self.assertEqual(runs["auto"], runs["none"])  # bit for bit
        saved = np.load(tmp / "auto" / "teacher_features_train.npz")
        digits = data.load("digits", image_size=16)
        want = teachers.load(self.teacher)(digits.train.images[:32])
        np.testing.assert_allclose(saved["features"][:32], want, rtol=1e-6,
                                   atol=1e-6)
        self.assertLen(saved["features"], len(digits.train))

    def test_bfloat16_teacher_is_close_and_returns_float32(self):
        self.skip_unless_kernels_run("bfloat16")
        images = data.load("digits").test.images[:64]
        want = teachers.load(self.teacher)(images).numpy()
        fast = teacher_file.with_precision(teachers.load(self.teacher),
                                           "bfloat16")
        got = fast(images).numpy()
        self.assertEqual(got.dtype, np.float32)
        error = self.rel_err(got, want)
        print(f"bfloat16 teacher: features within {error:.1e} of float32")
        self.assertLess(error, 2e-2)
        self.assertGreater(error, 0)


class XlaChoiceTest(TestCase):

    def test_under_op_determinism_auto_is_off_and_true_is_obeyed(self):
        from unittest import mock

        import tensorflow as tf
        from tensorflow.python.framework import config as tf_config
        with mock.patch.object(tf.config, "list_physical_devices",
                               return_value=["GPU:0"]):
            self.assertEqual(build.choose_jit("auto")[0], True)
            jit, why = build.choose_jit("auto", deterministic=True)
        self.assertFalse(jit)
        self.assertIn("off under op determinism", why)
        # The loop compiles its step with what was chosen, which Keras's
        # own jit_compile would refuse under op determinism.
        c = config_lib.default_config()
        c.dataset, c.student, c.distill = "digits", "resnet8", "none"
        c.jit_compile = "true"
        c = config_lib.resolve(c)
        with runtime.op_determinism(True):
            model = build.build_model(c, data.load("digits"))
            self.assertTrue(tf_config.is_op_determinism_enabled())
        self.assertTrue(model.step_jit_compile)
        self.assertFalse(tf_config.is_op_determinism_enabled())

    def test_auto_is_off_on_cpu_and_says_why(self):
        jit, why = build.choose_jit("auto")
        self.assertFalse(jit)
        self.assertIn("off on CPU", why)
        self.assertEqual(build.choose_jit("true"),
                         (True, "jit_compile=true (config)"))
