"""Distiller: known answers from a fixed teacher, gradient routing,
unlabeled examples, precision and XLA; the method without a teacher."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from ega_tf import students
from ega_tf.nn.optimizers import TorchSGD
from ega_tf.students.head import build_student
from ega_tf.training.distiller import Distiller
from tests.references import np_ce, np_ega
from tests.test_case import TestCase, conv_teacher

K, D, B, S = 5, 16, 8, 16


def make(teacher=True, alpha=0.0, jit=False):
    keras.utils.set_random_seed(0)
    student = build_student(students.create("resnet8", input_shape=(S, S, 3)),
                            K, D)
    model = Distiller(student, conv_teacher(S) if teacher else None, K, D,
                      method="ega" if teacher else "none",
                      weights={"alpha": alpha})
    # Eager unless compiled with XLA: each test takes a step or two, and
    # tracing the step costs about as much as seven eager ones.
    model.compile(TorchSGD(0.05), teacher_head_optimizer=TorchSGD(0.01)
                  if teacher else None, jit_compile=jit, run_eagerly=not jit)
    return model


def batch(seed=0, labels=None):
    rng = np.random.default_rng(seed)
    x = {"student": rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8),
         "teacher": rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)}
    y = rng.integers(0, K, B) if labels is None else np.asarray(labels)
    return x, y


def expected_terms(model, x, y):
    """The loss computed independently from the model's current weights."""
    out = model.student(x["student"], training=True)
    f_t = model.teacher(x["teacher"], training=False)
    x_t = model.teacher_embed(f_t).numpy()
    z_t = model.teacher_classifier(x_t).numpy()
    ega, node, edge = np_ega(x_t, out["embedding"].numpy())
    ce = np_ce(out["logits"].numpy(), y)
    features = out["features"].numpy()
    return {"loss": ce + ega, "ce": ce, "node": node, "edge": edge,
            "teacher_ce": np_ce(z_t, y),
            "zero_features": float(np.mean(features == 0)),
            "xs_norm": float(np.linalg.norm(out["embedding"].numpy(),
                                            axis=1).mean())}


class DistillerTest(TestCase):

    @parameterized.named_parameters(("all_labeled", None),
                                    ("some_unlabeled",
                                     [0, -1, 2, -1, 4, 1, -1, 3]))
    def test_train_step_known_answer(self, labels):
        model = make()
        x, y = batch(labels=labels)
        want = expected_terms(model, x, y)
        self.assertTermsClose(model.train_on_batch(x, y, return_dict=True),
                              want)

    def test_dead_features_are_counted(self):
        """zero_features is the share of pooled features exactly 0: with
        the last block's BatchNorm shifted far below zero, every ReLU is
        dead."""
        model = make(teacher=False)
        x, y = batch()
        self.assertLess(model.test_on_batch(x["student"], y,
                                            return_dict=True)[
                                                "zero_features"], 0.5)
        last_bn = [l for l in model.student.layers[-3]._flatten_layers()
                   if isinstance(l, keras.layers.BatchNormalization)][-1]
        last_bn.beta.assign(last_bn.beta - 1e4)
        got = model.test_on_batch(x["student"], y, return_dict=True)
        self.assertEqual(got["zero_features"], 1.0)

    def test_all_unlabeled_batch_trains_on_ega_only(self):
        model = make()
        x, y = batch(labels=[-1] * B)
        want = expected_terms(model, x, y)
        got = model.train_on_batch(x, y, return_dict=True)
        self.assertEqual((got["ce"], got["teacher_ce"]), (0.0, 0.0))
        self.assertTermsClose(got, {"loss": want["loss"]})
        self.assertGreater(got["loss"], 0)
        self.assertEqual(got["top1"], 0.0)  # no labeled example counted

    def test_teacher_frozen_and_head_trained_by_its_ce_alone(self):
        model = make()
        x, y = batch()
        teacher_before = [w.numpy().copy() for w in model.teacher.weights]
        head = model.teacher_head_variables
        head_before = [v.numpy().copy() for v in head]
        with tf.GradientTape() as tape:
            f_t = model.teacher(x["teacher"], training=False)
            z_t = model.teacher_classifier(model.teacher_embed(f_t))
            ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, z_t, from_logits=True))
        grads = tape.gradient(ce, head)
        model.train_on_batch(x, y)
        for before, after in zip(teacher_before, model.teacher.weights):
            np.testing.assert_array_equal(before, after.numpy())
        # First TorchSGD step: w - lr * (g + wd * w), lr 0.01, wd 5e-4.
        for w0, g, v in zip(head_before, grads, head):
            np.testing.assert_allclose(
                v.numpy(), w0 - 0.01 * (g.numpy() + 5e-4 * w0),
                rtol=1e-5, atol=1e-7)

    def test_student_gets_ega_gradient(self):
        """beta scales the student's update: EGA reaches the student."""
        x, y = batch()
        updates = []
        for beta in (0.0, 1.0):
            model = make()
            model.beta = beta
            w = model.student.get_layer("embed").kernel
            before = w.numpy().copy()
            model.train_on_batch(x, y)
            updates.append(w.numpy() - before)
        self.assertGreater(np.abs(updates[0] - updates[1]).max(), 1e-6)

    def test_kd_term(self):
        model = make(alpha=0.5)
        x, y = batch()
        got = model.train_on_batch(x, y, return_dict=True)
        self.assertGreater(got["kd"], 0)
        np.testing.assert_allclose(
            got["loss"], got["ce"] + 0.8 * got["node"] + 0.24 * got["edge"]
            + 0.5 * got["kd"], rtol=1e-5)

    def test_call_is_the_student_alone(self):
        model = make()
        x, _ = batch()
        np.testing.assert_array_equal(
            model(x["student"]).numpy(),
            model.student(x["student"], training=False)["logits"].numpy())
        self.assertEqual(model.predict(x["student"], verbose=0).shape, (B, K))

    def test_baseline_is_cross_entropy_alone(self):
        model = make(teacher=False)
        x, y = batch()
        out = model.student(x["student"], training=True)
        got = model.train_on_batch(x, y, return_dict=True)
        self.assertEqual(set(got), {"loss", "ce", "top1", "top5",
                                    "zero_features", "xs_norm"})
        self.assertTermsClose(got, {"loss": np_ce(out["logits"].numpy(), y)})

    def test_checkpoint_items_name_the_whole_trainable_state(self):
        model = make()
        items = model.checkpoint_items()
        self.assertCountEqual(items, ["student", "optimizer", "teacher_embed",
                                      "teacher_classifier",
                                      "teacher_head_optimizer",
                                      "gradient_monitor"])
        self.assertNotIn("teacher", items)  # frozen: its own file
        self.assertTrue(model.optimizer.built)  # restorable before a step
        self.assertCountEqual(make(teacher=False).checkpoint_items(),
                              ["student", "optimizer"])

    def test_xla_matches_eager(self):
        x, y = batch()
        eager = make(jit=False).train_on_batch(x, y, return_dict=True)
        compiled = make(jit=True)
        # Keras turns XLA off while op determinism is on; a run must not
        # have left it on in this process (loop.run restores it).
        self.assertTrue(compiled.jit_compile)
        xla = compiled.train_on_batch(x, y, return_dict=True)
        self.assertTermsClose(xla, {k: eager[k] for k in
                                    ("loss", "node", "edge", "ce")},
                              rtol=1e-4)

    def test_mixed_precision_keeps_graph_in_float32(self):
        def check(policy):
            model = make()
            x, y = batch()
            out = model.student(x["student"], training=True)
            self.assertEqual(out["embedding"].dtype, tf.float32)
            got = model.train_on_batch(x, y, return_dict=True)
            self.assertTrue(all(np.isfinite(v) for v in got.values()))
        self.run_precision_test(check)


class MethodChoiceTest(TestCase):

    def test_no_method_without_a_teacher_and_a_named_one_with_it(self):
        keras.utils.set_random_seed(0)
        student = build_student(students.create(
            "resnet8", input_shape=(S, S, 3)), K, D)
        alone = Distiller(student, None, K, D)
        self.assertEqual(alone.method.name, "none")
        model = Distiller(student, conv_teacher(S), K, D, method="ega")
        self.assertEqual((model.method.name, model.beta), ("ega", 1.0))
        with self.assertRaisesRegex(ValueError, "'ega' needs a teacher"):
            Distiller(student, None, K, D, method="ega")
