"""EGA loss against an independent float64 NumPy implementation."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from ega_tf.methods import ega, kd, maths
from ega_tf.methods.keras_distillation import EGADistillationLoss
from tests.references import np_corr, np_ega, np_kd
from tests.test_case import TestCase

SHAPES = [(2, 3), (8, 16), (64, 256), (5, 1000), (128, 32)]
SCALES = [1e-3, 1.0, 1e3]


def _value_and_grads(t, s):
    t, s = tf.constant(t), tf.constant(s)
    with tf.GradientTape() as tape:
        tape.watch([t, s])
        loss = ega.ega_loss(t, s)
    return loss, tape.gradient(loss, [t, s])


class EGALossTest(TestCase):

    @parameterized.product(shape=SHAPES, scale=SCALES)
    def test_matches_float64_reference(self, shape, scale):
        rng = np.random.default_rng(hash((shape, scale)) % 2**32)
        t = (rng.normal(size=shape) * scale + rng.normal() * scale).astype(
            np.float32)
        s = (rng.normal(size=shape) * scale).astype(np.float32)
        s[: shape[0] // 2] += 0.5 * t[: shape[0] // 2]  # real correlation
        want, want_node, want_edge = np_ega(t, s)
        terms = ega.ega_terms(tf.constant(t), tf.constant(s))
        got = ega.ega_loss(tf.constant(t), tf.constant(s))
        self.assertTermsClose({"loss": got, **terms},
                              {"loss": want, "node": want_node,
                               "edge": want_edge}, atol=0)
        np.testing.assert_allclose(maths.correlation_matrix(t, s).numpy(),
                                   np_corr(t, s), atol=2e-6)

    def test_weights_and_frobenius_not_spectral(self):
        rng = np.random.default_rng(0)
        t, s = rng.normal(size=(2, 16, 32)).astype(np.float32)
        _, node, edge = np_ega(t, s)
        got = ega.ega_loss(t, s, node_weight=0.3, edge_weight=2.0)
        np.testing.assert_allclose(float(got), 0.3 * node + 2.0 * edge,
                                   rtol=1e-5)
        # The spectral norm of N - I is strictly smaller than the Frobenius
        # norm for a random matrix: guards against keras.ops.norm(ord=2).
        spectral = np.linalg.norm(np_corr(t, s) - np.eye(16), ord=2)
        self.assertGreater(float(ega.ega_terms(t, s)["node"]),
                           spectral * 1.5)

    def test_identical_embeddings_give_zero_edge_and_known_node(self):
        x = np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32)
        terms = ega.ega_terms(x, x)
        self.assertLess(abs(float(terms["edge"])), 1e-6)
        # N = E_t: its off-diagonal energy is what remains of N - I.
        c = np_corr(x, x)
        np.testing.assert_allclose(float(terms["node"]),
                                   np.sqrt(((c - np.eye(6))**2).sum()),
                                   rtol=1e-5)

    @parameterized.named_parameters(
        ("constant_teacher", np.ones((4, 8)),
         np.random.default_rng(2).normal(size=(4, 8))),
        ("all_zero", np.zeros((4, 8)), np.zeros((4, 8))),
        ("all_constant", np.full((3, 5), 0.1), np.full((3, 5), 0.1)),
        ("batch_of_one", np.random.default_rng(3).normal(size=(1, 8)),
         np.random.default_rng(4).normal(size=(1, 8))),
        ("width_one", np.random.default_rng(5).normal(size=(6, 1)),
         np.random.default_rng(6).normal(size=(6, 1))))
    def test_degenerate_inputs_are_finite(self, t, s):
        t, s = np.asarray(t, np.float32), np.asarray(s, np.float32)
        loss, grads = _value_and_grads(t, s)
        self.assertTrue(np.isfinite(float(loss)))
        for g in grads:
            self.assertTrue(np.all(np.isfinite(g.numpy())))
        want, _, _ = np_ega(t, s)  # the reference's convention: corr 0
        np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)

    def test_constant_row_correlates_zero(self):
        a = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]], np.float32)
        c = maths.correlation_matrix(a, a).numpy()
        np.testing.assert_allclose(c, [[0.0, 0.0], [0.0, 1.0]], atol=1e-6)

    def test_gradient_matches_float64_finite_differences(self):
        rng = np.random.default_rng(7)
        t = rng.normal(size=(5, 6))
        s = rng.normal(size=(5, 6))
        _, (_, g_s) = _value_and_grads(t.astype(np.float32),
                                       s.astype(np.float32))
        eps = 1e-6
        num = np.zeros_like(s)
        for idx in np.ndindex(*s.shape):
            sp, sm = s.copy(), s.copy()
            sp[idx] += eps
            sm[idx] -= eps
            num[idx] = (np_ega(t, sp)[0] - np_ega(t, sm)[0]) / (2 * eps)
        np.testing.assert_allclose(g_s.numpy(), num, rtol=1e-3, atol=1e-5)

    def test_mixed_precision_inputs_computed_in_float32(self):
        rng = np.random.default_rng(8)
        t, s = rng.normal(size=(2, 32, 64))
        loss = ega.ega_loss(tf.constant(t, tf.float16),
                            tf.constant(s, tf.bfloat16))
        self.assertEqual(loss.dtype, tf.float32)
        want = np_ega(t.astype(np.float16),
                      s.astype(tf.bfloat16.as_numpy_dtype))[0]
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)

    def test_xla_compiles_and_agrees(self):
        rng = np.random.default_rng(9)
        t, s = rng.normal(size=(2, 16, 8)).astype(np.float32)
        f = tf.function(ega.ega_loss, jit_compile=True)
        np.testing.assert_allclose(float(f(t, s)), np_ega(t, s)[0],
                                   rtol=1e-5)

    def test_mismatched_widths_fail_clearly(self):
        with self.assertRaisesRegex(ValueError, "same width"):
            ega.ega_terms(np.ones((2, 3), np.float32),
                          np.ones((2, 4), np.float32))

    def test_kd_loss_matches_reference(self):
        rng = np.random.default_rng(10)
        t, s = rng.normal(size=(2, 4, 7)) * 3
        np.testing.assert_allclose(
            float(kd.kd_loss(t.astype(np.float32), s.astype(np.float32),
                             4.0)), np_kd(t, s, 4.0), rtol=1e-5)


class KerasDistillerIntegrationTest(TestCase):
    """EGA as a ``keras.distillation.DistillationLoss``."""

    @staticmethod
    def _tiny(name, width):
        import keras
        inp = keras.Input((4,))
        h = keras.layers.Dense(width, name="embedding")(inp)
        return keras.Model(inp, keras.layers.Dense(3, name="logits")(h),
                           name=name)

    def test_ega_distillation_loss_in_keras_distiller(self):
        import keras
        keras.utils.set_random_seed(0)
        teacher, student = self._tiny("t", 6), self._tiny("s", 6)
        ega = EGADistillationLoss(teacher_layer_name="embedding",
                                  student_layer_name="embedding")
        dist = keras.distillation.Distiller(teacher, student, ega,
                                            student_loss_weight=0.5)
        dist.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
        t_emb = keras.Model(teacher.input,
                            teacher.get_layer("embedding").output)(x).numpy()
        s_emb = keras.Model(student.input,
                            student.get_layer("embedding").output)(x).numpy()
        got = ega.compute_loss(tf.constant(t_emb), tf.constant(s_emb))
        np.testing.assert_allclose(float(got), np_ega(t_emb, s_emb)[0],
                                   rtol=1e-5)
        hist = dist.fit(x, np.arange(10) % 3, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(hist.history["loss"][0]))
        with self.assertRaisesRegex(ValueError, "equal width"):
            ega.validate_outputs(tf.zeros((2, 3)), tf.zeros((2, 4)))
        edge_only = EGADistillationLoss(node_weight=0.0)
        edge_only.validate_outputs(tf.zeros((2, 3)), tf.zeros((2, 4)))
        np.testing.assert_allclose(
            float(edge_only.compute_loss(tf.constant(t_emb),
                                         tf.constant(s_emb))),
            0.24 * np_ega(t_emb, s_emb)[2], rtol=1e-5)


class MaskedGraphTest(TestCase):

    def test_a_mask_gives_the_terms_of_the_kept_rows(self):
        rng = np.random.default_rng(11)
        t, s = rng.normal(size=(2, 9, 16)).astype(np.float32)
        keep = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0], np.float32)
        got = ega.ega_terms(t, s, mask=keep)
        _, node, edge = np_ega(t[keep > 0], s[keep > 0])
        self.assertTermsClose(got, {"node": node, "edge": edge})
        # Whatever the padded rows hold.
        t[keep == 0], s[keep == 0] = 1e6, 0.0
        self.assertTermsClose(ega.ega_terms(t, s, mask=keep),
                              {"node": node, "edge": edge})
