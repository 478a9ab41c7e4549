"""The diagnostic method of tools/diagnostics against a float64 reference:
EGA's node term with the pairs of two labeled images of one class left
out."""

import numpy as np
import tensorflow as tf

from ega_tf.methods import Batch
from tests.references import np_corr, np_ega
from tests.test_case import TestCase
from tools.diagnostics.ega_same_class import EGASameClassFree


def terms(t, s, y):
    method = EGASameClassFree(dict(EGASameClassFree.defaults))
    ones = tf.ones(len(y))
    b = Batch(x_t=tf.constant(t, tf.float32), x_s=tf.constant(s, tf.float32),
              t_logits=None, s_logits=None, labels=None, labeled=None,
              valid=ones, raw_labels=tf.constant(y, tf.int32), index=None,
              training=True)
    return {k: float(v) for k, v in method.compute(b).terms.items()}


class SameClassFreeTest(TestCase):

    def test_node_term_leaves_out_same_class_pairs_only(self):
        rng = np.random.default_rng(0)
        t, s = rng.normal(size=(2, 12, 16))
        y = np.array([0, 0, 1, 1, 1, 2, -1, -1, 0, 3, 3, 2])
        n = np_corr(t, s)
        same = (y[:, None] == y[None, :]) & (y[:, None] >= 0)
        keep = ~same | np.eye(12, dtype=bool)
        want_node = np.sqrt((((n - np.eye(12)) * keep)**2).sum())
        got = terms(t, s, y)
        self.assertAllClose(got["node"], want_node, rtol=1e-5)
        self.assertAllClose(got["edge"], np_ega(t, s)[2], rtol=1e-5)
        # With no labels (or no two of one class) it is EGA's node term.
        unlabeled = terms(t, s, np.full(12, -1))
        self.assertAllClose(unlabeled["node"], np_ega(t, s)[1], rtol=1e-5)
        self.assertGreater(np_ega(t, s)[1] - want_node, 0.03)  # it differs
