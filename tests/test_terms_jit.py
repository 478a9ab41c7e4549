"""The method's terms as their own XLA-compiled function inside the step
(``Distiller.terms_jit_compile``): the same terms and the same weights as
uncompiled, and ``build.choose_terms_jit``'s decision."""

from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from ega_tf import config as config_lib
from ega_tf.core.errors import ConfigError, UserError
from ega_tf.methods import rkd
from ega_tf.nn.optimizers import TorchSGD
from ega_tf.students.head import build_student
from ega_tf.training.build import choose_terms_jit
from ega_tf.training.distiller import Distiller
from tests.test_case import TestCase, conv_teacher, small_cnn

K, D, B, S = 5, 16, 8, 16
# XLA fuses the terms' float32 sums in its own order. Measured on a 2-vCPU
# Xeon, from the same weights: the logged terms differ by at most 1.1e-5
# relative (KD's term in the test step; 8.6e-6 RKD's distance term in
# training, whose pairwise distances cancel |a|^2 + |b|^2 - 2 a.b; 4.1e-6
# EGA's edge term), the weights after the step by at most 9.9e-6 of their
# variable's largest value (EGA, a BatchNorm offset, which one step moves
# by the learning rate times its gradient alone).
TERMS_RTOL = 5e-5
WEIGHTS_RTOL = 5e-5


def make(method, compiled):
    keras.utils.set_random_seed(0)
    student = build_student(small_cnn((S, S, 3), raw_pixels=False), K, D)
    model = Distiller(student, conv_teacher(S), K, D, method=method)
    model.terms_jit_compile = compiled
    # Eager steps (a trace of the step costs about seven of them); the
    # terms' function is compiled whatever the step.
    model.compile(TorchSGD(0.05), teacher_head_optimizer=TorchSGD(0.01),
                  jit_compile=False, run_eagerly=True)
    return model


def state(model):
    return (model.student.weights + model.teacher.weights
            + model.teacher_head_variables + model.method.variables)


def batch():
    rng = np.random.default_rng(0)
    x = {"student": rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8),
         "teacher": rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)}
    return x, np.array([0, -1, 2, 3, 4, 1, -1, 3])


class TermsJitTest(TestCase):

    @parameterized.parameters("ega", "kd", "rkd")
    def test_compiled_terms_equal_uncompiled(self, method):
        plain, compiled = make(method, False), make(method, True)
        for a, b in zip(state(plain), state(compiled)):
            b.assign(a)
        x, y = batch()
        logs = [(m.test_on_batch(x, y, return_dict=True),
                 m.train_on_batch(x, y, return_dict=True))
                for m in (plain, compiled)]
        self.assertIsNone(plain._compiled_terms)
        self.assertIsNotNone(compiled._compiled_terms)
        # One trace each for the train and the test step.
        self.assertEqual(
            compiled._compiled_terms.experimental_get_tracing_count(), 2)
        for want, got in zip(*logs):
            self.assertEqual(set(want), set(got))
            for name in want:
                np.testing.assert_allclose(got[name], want[name],
                                           rtol=TERMS_RTOL, atol=1e-6,
                                           err_msg=f"{method}: {name}")
        for a, b in zip(state(plain), state(compiled)):
            a, b = a.numpy(), b.numpy()
            scale = max(float(np.abs(a).max()), 1e-6) if a.size else 1.0
            np.testing.assert_allclose(b, a, rtol=0,
                                       atol=WEIGHTS_RTOL * scale)

    def test_unit_rows_gradient_at_zero_under_xla(self):
        """RKD's angle term has a zero difference row per anchor: XLA's
        square-root gradient at 0 is NaN where TensorFlow's is 0, so
        ``unit_rows`` floors before the root (the terms' gradient was NaN
        compiled)."""
        e = tf.constant(np.random.default_rng(0).normal(size=(4, 3)),
                        tf.float32)

        @tf.function(jit_compile=True)
        def gradient(e):
            with tf.GradientTape() as tape:
                tape.watch(e)
                angle = rkd.rkd_terms(e * 0.5, e)["rkd_angle"]
            return tape.gradient(angle, e)
        self.assertTrue(np.isfinite(gradient(e).numpy()).all())

    def test_choice(self):
        self.assertEqual(choose_terms_jit("auto")[0], False)  # CPU
        self.assertEqual(choose_terms_jit("auto", deterministic=True)[0],
                         False)
        self.assertEqual(choose_terms_jit("true")[0], True)
        self.assertEqual(choose_terms_jit("false")[0], False)
        with self.assertRaisesRegex(UserError, "terms_jit_compile=true"):
            choose_terms_jit("true", replicas=2)
        self.assertEqual(choose_terms_jit("false", replicas=2)[0], False)

    def test_choice_on_gpu(self):
        class Unsure:
            name, xla_deterministic = "unsure", False
        with mock.patch.object(tf.config, "list_physical_devices",
                               return_value=["GPU:0"]):
            self.assertEqual(choose_terms_jit("auto")[0], True)
            self.assertEqual(choose_terms_jit("auto", deterministic=True)[0],
                             True)
            self.assertEqual(choose_terms_jit("auto", step_jit=True)[0],
                             False)
            self.assertEqual(choose_terms_jit("true", replicas=2)[0], True)
            self.assertEqual(choose_terms_jit("auto", method=Unsure())[0],
                             True)
            on, why = choose_terms_jit("auto", deterministic=True,
                                       method=Unsure())
            self.assertFalse(on)
            self.assertIn("unsure", why)

    def test_config_checks_the_setting(self):
        c = config_lib.default_config("smoke")
        self.assertEqual(c.terms_jit_compile, "auto")
        c.terms_jit_compile = "sometimes"
        with self.assertRaisesRegex(ConfigError, "terms_jit_compile"):
            config_lib.validate(c)
