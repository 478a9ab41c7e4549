"""Balanced weights and the gradient measurements
(``ega_tf.training.balance``):
the norms of each term's gradient on the student's outputs against a
float64 NumPy computation, the moving averages against their formula, the
effective weights and the logged ratios they give, the divergence message
naming the term that drove it, and one device against two. Resuming a
balanced run exactly is in test_runs (its crash test trains balanced)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ega_tf import config as config_lib
from ega_tf import methods
from ega_tf.nn import layers
from ega_tf.nn.optimizers import TorchSGD
from ega_tf.students.head import build_student
from ega_tf.training import balance, distribute, divergence
from ega_tf.training.distiller import Distiller
from tests.references import np_ega, np_kd, np_softmax
from tests.test_case import (TestCase, conv_teacher, lockstep_errors,
                             run_lockstep, run_replica_steps, small_cnn)

K, D, S, B, N = 5, 16, 16, 8, 40


def train_labels():
    labels = np.arange(N) % K
    labels[np.arange(N) % 3 != 0] = -1  # a third labeled
    return labels


def make(name, balanced=True, ratio=1.0, **weights):
    keras.utils.set_random_seed(0)
    student = build_student(small_cnn((S, S, 3), raw_pixels=False), K, D)
    layers.synchronize_batchnorm(student, True)  # BN over the global batch
    method = methods.create(name, weights, num_examples=N, embed_dim=D,
                            seed=0, steps_per_epoch=2, labels=train_labels())
    model = Distiller(student, conv_teacher(S, batchnorm=False), K, D,
                      method=method, balance_weights=balanced,
                      balance_ratio=ratio)
    model.compile(TorchSGD(0.01), teacher_head_optimizer=TorchSGD(0.01))
    return model


def batch(step=0):
    rng = np.random.default_rng(step)
    index = rng.permutation(N)[:B]
    x = {v: rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)
         for v in ("student", "teacher")}
    x["index"] = index
    return x, train_labels()[index]


def finite_difference(fn, x, eps=1e-6):
    """float64 central differences of the scalar ``fn`` at ``x``."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def step_inputs(model, x):
    """(x_t, x_s, z_s, classifier kernel) of the training step on ``x``,
    as float64: the student in training mode, as the step runs it."""
    out = model.student(x["student"], training=True)
    x_t = model.teacher_embed(tf.cast(model.teacher(x["teacher"]),
                                      "float32"))
    kernel = model.student.get_layer("classifier").kernel
    return [np.asarray(v, np.float64) for v in
            (x_t, out["embedding"], out["logits"], kernel)]


def ce_gradient(z, y, kernel):
    """float64: the labeled-mean cross-entropy's gradient on x_s, through
    the classifier (z = x_s W + b)."""
    labeled = (y >= 0).astype(np.float64)
    onehot = np.eye(K)[np.maximum(y, 0)]
    g_z = labeled[:, None] * (np_softmax(z) - onehot) / labeled.sum()
    return g_z @ kernel.T


def norm(*grads):
    return float(np.sqrt(sum((g ** 2).sum() for g in grads)))


class GradientNormTest(TestCase):

    def test_ega_norms_and_balanced_weight_against_float64(self):
        model = make("ega")
        x, y = batch()
        t, s, z, kernel = step_inputs(model, x)
        ce = norm(ce_gradient(z, y, kernel))
        value = norm(finite_difference(lambda v: np_ega(t, v)[0], s))
        node = norm(finite_difference(lambda v: 0.8 * np_ega(t, v)[1], s))
        edge = norm(finite_difference(lambda v: 0.24 * np_ega(t, v)[2], s))
        logs, = run_replica_steps(model, tf.distribute.get_strategy(),
                                  [(x, y)])
        slow, fast = np.asarray(model.gradient_monitor.smoothed())
        self.assertEqual(model.gradient_monitor.parts,
                         ("ce", "method", "term:node", "term:edge"))
        # After one step both averages are that step's norms.
        for got in (slow, fast):
            self.assertAllClose(got, [ce, value, node, edge], rtol=2e-4)
        self.assertAllClose(logs["weight_beta"], ce / value, rtol=2e-4)
        # The balanced term pushes as hard as the cross-entropy; its terms
        # keep their published proportion.
        self.assertAllClose(logs["grad_ratio_ega"], 1.0, rtol=1e-5)
        self.assertAllClose(logs["grad_ratio_node"], node / value,
                            rtol=2e-4)
        self.assertAllClose(logs["grad_ratio_edge"], edge / value,
                            rtol=2e-4)

    def test_kd_alpha_balanced_against_float64(self):
        model = make("kd", ratio=0.5)
        x, y = batch(1)
        t, s, z, kernel = step_inputs(model, x)
        t_logits = np.asarray(model.teacher_classifier(t.astype(np.float32)),
                              np.float64)
        ce = norm(ce_gradient(z, y, kernel))
        # KD reads the logits: its gradient reaches x_s through the
        # classifier.
        g_z = finite_difference(lambda v: np_kd(t_logits, v, 4.0), z)
        kd = norm(g_z @ kernel.T)
        logs, = run_replica_steps(model, tf.distribute.get_strategy(),
                                  [(x, y)])
        self.assertEqual(model.gradient_monitor.parts, ("ce", "kd"))
        self.assertAllClose(np.asarray(model.gradient_monitor.smoothed())[0],
                            [ce, kd], rtol=2e-4)
        self.assertAllClose(logs["weight_alpha"], 0.5 * ce / kd, rtol=2e-4)
        self.assertNotIn("weight_beta", logs)

    def test_published_weights_are_measured_not_changed(self):
        """Published weights: the step's loss is the published sum, and
        each term's ratio is its published weight's push over the
        cross-entropy's."""
        model = make("rkd", balanced=False)
        self.assertEqual(model.monitor_names(), (
            "grad_ratio_rkd", "grad_ratio_rkd_distance",
            "grad_ratio_rkd_angle"))
        x, y = batch(2)
        logs, = run_replica_steps(model, tf.distribute.get_strategy(),
                                  [(x, y)])
        self.assertAllClose(logs["loss"], logs["ce"] + 25 * logs[
            "rkd_distance"] + 50 * logs["rkd_angle"], rtol=1e-5)
        slow, _ = np.asarray(model.gradient_monitor.smoothed())
        self.assertAllClose(logs["grad_ratio_rkd"], slow[1] / slow[0],
                            rtol=1e-5)


class MonitorTest(TestCase):

    def test_moving_averages_bias_corrected_skipping_non_finite_steps(self):
        monitor = balance.monitor(["ce", "method", "term:a"], 0.8)
        steps = [[1.0, 4.0, 2.0], [3.0, 2.0, np.nan], [np.inf, 1.0, 1.0],
                 [2.0, 8.0, 4.0]]
        ema, count = np.zeros((2, 3)), 0
        decays = np.array([[0.8], [balance.FAST_DECAY]])
        required = tf.constant([True, True, False])
        for norms in steps:
            got = monitor.update(tf.constant(norms, tf.float32), required)
            norms = np.array(norms)
            if np.isfinite(norms[:2]).all():  # the step counts
                known = np.isfinite(norms)
                ema = np.where(known, decays * ema + (1 - decays) * np.where(
                    known, norms, 0), ema)
                count += 1
            self.assertAllClose(got, ema / (1 - decays ** count), rtol=1e-6)
        self.assertEqual(float(monitor.count), 3)

    def test_ratio_weight_of_a_term_without_gradient_is_zero(self):
        self.assertEqual(float(balance.ratio_weight(1.0, 2.0, 0.0)), 0.0)
        self.assertAllClose(float(balance.ratio_weight(0.5, 2.0, 4.0)), 0.25)

    def test_dominant_term(self):
        self.assertEqual(balance.dominant({"a": 0.3, "b": 2.5, "c": None}),
                         ("b", 2.5))
        self.assertIsNone(balance.dominant({"a": 0.9, "b": float("nan")}))


class DivergenceCauseTest(TestCase):

    def test_a_huge_weight_is_named_as_the_cause(self):
        """DKD with its NCKD weight 1e5: the measured ratios name nckd,
        not the cross-entropy, with its field and value; balanced runs
        name no term."""
        c = config_lib.default_config()
        c.dataset, c.teacher, c.distill = "digits", "t.keras", "dkd"
        c.loss.dkd_beta = 1e5
        c = config_lib.resolve(c)
        model = make("dkd", balanced=False, dkd_beta=1e5)
        run_replica_steps(model, tf.distribute.get_strategy(),
                          [batch(3), batch(4)])
        cause = divergence.cause_of(c, model)
        self.assertEqual((cause["term"], cause["field"], cause["weight"]),
                         ("nckd", "dkd_beta", 1e5))
        self.assertGreater(cause["ratio"], 10 * cause["ratios"]["tckd"])
        error = divergence.DivergedError("ce", float("nan"), 2, 4, 0.05, cause)
        text = str(error)
        self.assertIn("driven by the nckd term", text)
        self.assertIn("--weights=balanced", text)
        self.assertIn("--config.loss.dkd_beta, now 100000", text)
        self.assertIn("then ce became nan", text)
        record = error.record()
        self.assertEqual((record["term"], record["non_finite"]),
                         ("nckd", "ce"))
        self.assertEqual(str(divergence.DivergedError.from_record(record)),
                         text)
        # The other terms' ratios with two digits; one that lost its
        # gradient (a saturated softmax) as under 0.01x, exact in the record.
        for tckd, shown in ((0.25, "(tckd 0.25x)"),
                            (1.6e-14, "(tckd <0.01x)")):
            vanished = {**cause, "ratios": {"tckd": tckd, "nckd": 30.0}}
            error = divergence.DivergedError("ce", float("nan"), 10, 9, 0.05,
                                             vanished)
            self.assertIn(shown, str(error))
            self.assertEqual(error.record()["cause"]["ratios"]["tckd"], tckd)
        # No distillation term dominated: the learning rate is the advice.
        plain = divergence.DivergedError("ce", float("inf"), 0, 0, 1e6)
        self.assertRegex(str(plain), r"^training diverged: ce became inf "
                         r"at epoch 1, step 1 .*Lower --config.optim.lr")
        self.assertIsNone(divergence.cause_of(c, make("dkd", dkd_beta=1e5)))


class BalanceReplicasTest(TestCase):
    """Global batch 8 as one replica and as two of 4, two steps in
    lockstep (the two-replica model given the one-device model's state,
    the monitor's averages included, before each step): the norms are of
    the global batch, so the effective weight, the ratios and the state
    agree to float32 rounding, held to 1e-4 as the other replica tests."""

    def check(self, name, **weights):
        pairs = []
        for strategy in (tf.distribute.get_strategy(),
                         distribute.mirrored(["/cpu:0", "/cpu:1"])):
            with strategy.scope():
                pairs.append((make(name, **weights), strategy))
        steps = run_lockstep(*pairs, [batch(s) for s in range(2)])
        terms, state = lockstep_errors(steps)
        self.assertIn("weight_beta", steps[0][0])
        for term, error in terms.items():
            self.assertLessEqual(error, 1e-4, term)
        worst = max(state, key=state.get)
        self.assertLessEqual(state[worst], 1e-4, worst)
        self.assertTrue(any(k.startswith("gradient_monitor/")
                            for k in state))

    def test_two_replicas_equal_one_ega_and_kd(self):
        """EGA's graph over the gathered batch and a KD term, both
        balanced."""
        self.check("ega", alpha=0.5)

    @pytest.mark.slow
    def test_two_replicas_equal_one_with_state_crd(self):
        """CRD: banks, per-index negatives, its own trainable layers on
        x_s."""
        self.check("crd")


class DivergingRunTest(TestCase):

    def test_a_huge_method_weight_is_named_in_the_message_and_results(self):
        """FitNets' hint at 1,000 times its published weight diverges in
        the first epoch: the one-line message and results.json name the
        hint term and its weight, not the cross-entropy it took along."""
        import json

        from tests.test_case import pixel_teacher
        tmp = self.tmp_path()
        teacher = pixel_teacher(tmp / "teacher.keras")
        r = self.run_cli("train", "--dataset=digits", "--student=resnet8",
                         f"--teacher={teacher}", "--distill=hint",
                         "--epochs=1", "--config.loss.beta=1e5",
                         "--config.export=false",
                         "--config.data.image_size=16", f"--workdir={tmp}/w")
        self.assertEqual(r.code, 3, r.stderr)
        line, = r.output_lines
        self.assertRegex(line, r"^stopped: training diverged at epoch 1, "
                         r"step \d+ \(learning rate 0.05\), driven by the "
                         r"hint term: its gradient on the student's outputs "
                         r"was \S+x the cross-entropy's")
        self.assertIn("--weights=balanced", line)
        self.assertIn("--config.loss.beta, now 100000", line)
        diverged = json.loads((tmp / "w" / "results.json").read_text())[
            "diverged"]
        self.assertEqual((diverged["term"], diverged["cause"]["field"]),
                         ("hint", "beta"))
        self.assertGreater(diverged["cause"]["ratio"], 1.0)
