"""EGA loss against an independent float64 NumPy implementation."""

import numpy as np
import pytest
import tensorflow as tf

from ega_tf import losses


def np_corr(a, b):
    """Pearson correlation between rows, float64, written independently."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out = np.zeros((len(a), len(b)))
    for i, u in enumerate(a):
        for j, v in enumerate(b):
            du, dv = u - u.mean(), v - v.mean()
            den = np.sqrt((du**2).sum() * (dv**2).sum())
            out[i, j] = (du * dv).sum() / den if den > 0 else 0.0
    return out


def np_ega(t, s, wn=0.8, we=0.24):
    n = np_corr(t, s)
    node = np.sqrt(((n - np.eye(len(t)))**2).sum())
    edge = np.sqrt(((np_corr(t, t) - np_corr(s, s))**2).sum())
    return wn * node + we * edge, node, edge


SHAPES = [(2, 3), (8, 16), (64, 256), (5, 1000), (128, 32)]
SCALES = [1e-3, 1.0, 1e3]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
def test_matches_float64_reference(shape, scale):
    rng = np.random.default_rng(hash((shape, scale)) % 2**32)
    t = (rng.normal(size=shape) * scale + rng.normal() * scale).astype(
        np.float32)
    s = (rng.normal(size=shape) * scale).astype(np.float32)
    s[: shape[0] // 2] += 0.5 * t[: shape[0] // 2]  # some real correlation
    want, want_node, want_edge = np_ega(t, s)
    terms = losses.ega_terms(tf.constant(t), tf.constant(s))
    got = losses.ega_loss(tf.constant(t), tf.constant(s))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(terms["node"]), want_node, rtol=1e-5)
    np.testing.assert_allclose(float(terms["edge"]), want_edge, rtol=1e-5)
    np.testing.assert_allclose(
        losses.correlation_matrix(t, s).numpy(), np_corr(t, s), atol=2e-6)


def test_weights_and_frobenius_not_spectral():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(2, 16, 32)).astype(np.float32)
    _, node, edge = np_ega(t, s)
    got = losses.ega_loss(t, s, node_weight=0.3, edge_weight=2.0)
    np.testing.assert_allclose(float(got), 0.3 * node + 2.0 * edge, rtol=1e-5)
    # The spectral norm of N - I is strictly smaller than the Frobenius norm
    # for a random matrix: guards against keras.ops.norm(ord=2).
    spectral = np.linalg.norm(np_corr(t, s) - np.eye(16), ord=2)
    assert float(losses.ega_terms(t, s)["node"]) > spectral * 1.5


def test_identical_embeddings_give_zero_edge_and_known_node():
    x = np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32)
    terms = losses.ega_terms(x, x)
    assert abs(float(terms["edge"])) < 1e-6
    # N = E_t: its off-diagonal energy is exactly what remains of N - I.
    c = np_corr(x, x)
    np.testing.assert_allclose(float(terms["node"]),
                               np.sqrt(((c - np.eye(6))**2).sum()), rtol=1e-5)


def _value_and_grads(t, s):
    t, s = tf.constant(t), tf.constant(s)
    with tf.GradientTape() as tape:
        tape.watch([t, s])
        loss = losses.ega_loss(t, s)
    return loss, tape.gradient(loss, [t, s])


@pytest.mark.parametrize("t,s", [
    (np.ones((4, 8)), np.random.default_rng(2).normal(size=(4, 8))),
    (np.zeros((4, 8)), np.zeros((4, 8))),
    (np.full((3, 5), 0.1), np.full((3, 5), 0.1)),
    (np.random.default_rng(3).normal(size=(1, 8)),
     np.random.default_rng(4).normal(size=(1, 8))),  # B = 1
    (np.random.default_rng(5).normal(size=(6, 1)),
     np.random.default_rng(6).normal(size=(6, 1))),  # D = 1
])
def test_degenerate_inputs_are_finite(t, s):
    t, s = np.asarray(t, np.float32), np.asarray(s, np.float32)
    loss, grads = _value_and_grads(t, s)
    assert np.isfinite(float(loss))
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
    want, _, _ = np_ega(t, s)  # the reference's convention: corr 0 if const
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)


def test_constant_row_correlates_zero():
    a = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]], np.float32)
    c = losses.correlation_matrix(a, a).numpy()
    np.testing.assert_allclose(c, [[0.0, 0.0], [0.0, 1.0]], atol=1e-6)


def test_gradient_matches_float64_finite_differences():
    rng = np.random.default_rng(7)
    t = rng.normal(size=(5, 6))
    s = rng.normal(size=(5, 6))
    _, (_, g_s) = _value_and_grads(t.astype(np.float32), s.astype(np.float32))
    eps = 1e-6
    num = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        sp, sm = s.copy(), s.copy()
        sp[idx] += eps
        sm[idx] -= eps
        num[idx] = (np_ega(t, sp)[0] - np_ega(t, sm)[0]) / (2 * eps)
    np.testing.assert_allclose(g_s.numpy(), num, rtol=1e-3, atol=1e-5)


def test_mixed_precision_inputs_computed_in_float32():
    rng = np.random.default_rng(8)
    t, s = rng.normal(size=(2, 32, 64))
    loss = losses.ega_loss(tf.constant(t, tf.float16), tf.constant(s, tf.bfloat16))
    assert loss.dtype == tf.float32
    want = np_ega(t.astype(np.float16), s.astype(tf.bfloat16.as_numpy_dtype))[0]
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_xla_compiles_and_agrees():
    rng = np.random.default_rng(9)
    t, s = rng.normal(size=(2, 16, 8)).astype(np.float32)
    f = tf.function(losses.ega_loss, jit_compile=True)
    np.testing.assert_allclose(float(f(t, s)), np_ega(t, s)[0], rtol=1e-5)


def test_mismatched_widths_fail_clearly():
    with pytest.raises(ValueError, match="same width"):
        losses.ega_terms(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))


def test_kd_loss_matches_reference():
    rng = np.random.default_rng(10)
    t, s = rng.normal(size=(2, 4, 7)) * 3
    T = 4.0
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    p, q = softmax(t / T), softmax(s / T)
    want = (p * (np.log(p) - np.log(q))).sum(-1).mean() * T * T
    np.testing.assert_allclose(
        float(losses.kd_loss(t.astype(np.float32), s.astype(np.float32), T)),
        want, rtol=1e-5)
