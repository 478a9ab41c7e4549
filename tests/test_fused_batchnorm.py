"""The students' BatchNorm on TensorFlow's fused kernel (``ega_tf.nn.layers.
BatchNorm``): its output, its gradients and its moving statistics against a
float64 NumPy reference of PyTorch's BatchNorm2d and against Keras's own
(unfused) BatchNormalization, in training and inference mode, on one
replica and with statistics synchronized over two."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from ega_tf.nn import layers
from ega_tf.training import distribute
from tests.test_case import TestCase

EPS = 1e-5
MOMENTUM = 0.9  # Keras's convention: PyTorch's 0.1


def reference(x, gamma, beta, upstream):
    """float64: PyTorch's training-mode BatchNorm2d on channels-last ``x``
    -> (y, dL/dx, dL/dgamma, dL/dbeta for dL/dy = upstream, batch mean,
    unbiased batch variance)."""
    x, g = x.astype(np.float64), upstream.astype(np.float64)
    axes = (0, 1, 2)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean, var = x.mean(axes), x.var(axes)
    xhat = (x - mean) / np.sqrt(var + EPS)
    y = gamma * xhat + beta
    dx = gamma / np.sqrt(var + EPS) * (
        g - g.mean(axes) - xhat * (g * xhat).mean(axes))
    return (y, dx, (g * xhat).sum(axes), g.sum(axes), mean,
            var * n / (n - 1))


def random_inputs(seed=0, shape=(6, 5, 5, 4)):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    # Channels with their own offsets and scales, one nearly constant.
    x = rng.normal(rng.normal(0, 3, c), rng.uniform(0.01, 4, c), shape)
    return (x.astype(np.float32), rng.uniform(0.5, 2, c),
            rng.normal(0, 1, c), rng.normal(0, 1, shape).astype(np.float32))


def build(layer, x, gamma, beta):
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer


def train_step(layer, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * upstream)
    dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y.numpy(), dx.numpy(), dgamma.numpy(), dbeta.numpy()


def synchronized_step(x, gamma, beta, upstream):
    """A synchronized BatchNorm's training step on two replicas, each given
    half of ``x`` (and of ``upstream``, dL/dy); returns ((y, dx, dL/dgamma
    and dL/dbeta summed over the replicas), (moving mean, moving variance)
    after the step, from zero and one)."""
    strategy = distribute.mirrored(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        two = build(layers.BatchNorm(momentum=MOMENTUM, epsilon=EPS,
                                     synchronized=True), x, gamma, beta)

    @tf.function
    def step(xs, gs):
        def replica(x, g):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = two(x, training=True)
                loss = tf.reduce_sum(y * g)
            return (y, *tape.gradient(loss, [x, two.gamma, two.beta]))
        return strategy.run(replica, args=(xs, gs))

    half = len(x) // 2
    halves = [(x[:half], upstream[:half]), (x[half:], upstream[half:])]
    xs, gs = (strategy.experimental_distribute_values_from_function(
        lambda ctx, i=i: tf.constant(halves[ctx.replica_id_in_sync_group][i]))
        for i in (0, 1))
    y, dx, dgamma, dbeta = ([t.numpy() for t in
                             strategy.experimental_local_results(v)]
                            for v in step(xs, gs))
    moving = [strategy.experimental_local_results(v.value)[0].numpy()
              for v in (two.moving_mean, two.moving_variance)]
    return (np.concatenate(y), np.concatenate(dx), sum(dgamma),
            sum(dbeta)), moving


class FusedBatchNormTest(TestCase):

    def test_training_step_matches_float64_pytorch_reference(self):
        x, gamma, beta, upstream = random_inputs()
        layer = build(layers.BatchNorm(momentum=MOMENTUM, epsilon=EPS), x,
                      gamma, beta)
        want = reference(x, gamma, beta, upstream)
        for got, ref, name in zip(train_step(layer, x, upstream), want,
                                  ("y", "dx", "dgamma", "dbeta")):
            scale = np.abs(ref).max()
            np.testing.assert_allclose(got, ref, atol=2e-5 * scale,
                                       err_msg=name)
        # Moving statistics: PyTorch's update, the unbiased variance.
        np.testing.assert_allclose(layer.moving_mean.numpy(),
                                   (1 - MOMENTUM) * want[4], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(),
                                   MOMENTUM + (1 - MOMENTUM) * want[5],
                                   rtol=1e-5)

    def test_same_as_keras_batchnormalization_but_the_moving_variance(self):
        """Keras's unfused layer normalises alike; it updates the moving
        variance with the biased batch variance, this one with n / (n-1)
        of it."""
        x, gamma, beta, upstream = random_inputs(seed=1)
        ours = build(layers.BatchNorm(momentum=MOMENTUM, epsilon=EPS), x,
                     gamma, beta)
        keras_bn = build(keras.layers.BatchNormalization(
            momentum=MOMENTUM, epsilon=EPS), x, gamma, beta)
        for a, b in zip(train_step(ours, x, upstream),
                        train_step(keras_bn, x, upstream)):
            np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max())
        n = np.prod(x.shape[:3])
        np.testing.assert_allclose(ours.moving_mean.numpy(),
                                   keras_bn.moving_mean.numpy(), rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(
            ours.moving_variance.numpy() - MOMENTUM,
            (keras_bn.moving_variance.numpy() - MOMENTUM) * n / (n - 1),
            rtol=1e-5)

    def test_inference_uses_the_moving_statistics(self):
        x, gamma, beta, _ = random_inputs(seed=2)
        layer = build(layers.BatchNorm(momentum=MOMENTUM, epsilon=EPS), x,
                      gamma, beta)
        rng = np.random.default_rng(3)
        mean, var = rng.normal(0, 2, 4), rng.uniform(0.1, 5, 4)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(var)
        want = gamma * (x - mean) / np.sqrt(var + EPS) + beta
        got = layer(x, training=False).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
        # The fused kernel in a graph, as training and serving trace it.
        np.testing.assert_allclose(tf.function(
            lambda v: layer(v, training=False))(x).numpy(), got, atol=1e-6)

    def test_other_ranks_take_keras_path(self):
        """A 2-D input (BatchNorm after a Dense layer) is not fused:
        Keras's path, its own biased moving variance."""
        rng = np.random.default_rng(4)
        x = rng.normal(1, 2, (16, 3)).astype(np.float32)
        layer = layers.BatchNorm(momentum=MOMENTUM, epsilon=EPS)
        y = layer(x, training=True).numpy()
        np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(
            x.var(0) + EPS), atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(),
                                   MOMENTUM + (1 - MOMENTUM) * x.var(0),
                                   rtol=1e-5)

    def test_synchronized_over_two_replicas_equals_one_device(self):
        """Statistics synchronized over two replicas, each given half the
        batch: the output, the gradients and the moving statistics of the
        whole batch on one device."""
        x, gamma, beta, upstream = random_inputs(seed=5, shape=(8, 4, 4, 3))
        one = build(layers.BatchNorm(momentum=MOMENTUM, epsilon=EPS), x,
                    gamma, beta)
        want = train_step(one, x, upstream)
        (y, dx, dgamma, dbeta), two = synchronized_step(x, gamma, beta,
                                                        upstream)
        scale = lambda a: 2e-5 * np.abs(a).max()  # noqa: E731
        np.testing.assert_allclose(y, want[0], atol=scale(want[0]))
        np.testing.assert_allclose(dx, want[1], atol=scale(want[1]))
        # Each replica's parameter gradient is its half's share; summed,
        # the whole batch's.
        for got, ref in ((dgamma, want[2]), (dbeta, want[3])):
            np.testing.assert_allclose(got, ref, atol=scale(ref))
        for a, b in ((two[0], one.moving_mean), (two[1], one.moving_variance)):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-7)

    @parameterized.parameters(30, 1000)
    def test_synchronized_moments_of_a_large_mean_against_float64(self,
                                                                  ratio):
        """Channels whose mean is ``ratio`` times their spread (nearly
        constant inputs), synchronized over two replicas, against the
        float64 reference. The variance comes out to float32 precision
        whatever the mean; taken as E[x^2] - E[x]^2, it lost ratio^2
        times that (measured: 7e-4 of it at 30, half of it at 1000). The
        output and dx carry the float32 rounding of the mean itself,
        about ratio * 6e-8 of their scale: the bound allows 8 times
        that; dL/dgamma sums terms of both signs, where the same error
        is a larger share of the sum (6 times the output's)."""
        rng = np.random.default_rng(7)
        shape = (16, 16, 16, 4)
        spread = rng.uniform(0.5, 2.0, shape[-1])
        x = (rng.normal(0, 1, shape) * spread + ratio * spread
             * rng.choice([-1.0, 1.0], shape[-1])).astype(np.float32)
        gamma, beta = rng.uniform(0.5, 2, 4), rng.normal(0, 1, 4)
        upstream = rng.normal(0, 1, shape).astype(np.float32)
        want = reference(x, gamma, beta, upstream)
        (y, dx, dgamma, dbeta), (mean, unbiased) = synchronized_step(
            x, gamma, beta, upstream)
        bound = 5e-7 * ratio
        for got, ref, tol, name in ((y, want[0], bound, "y"),
                                    (dx, want[1], bound, "dx"),
                                    (dgamma, want[2], 6 * bound, "dgamma"),
                                    (dbeta, want[3], 1e-5, "dbeta")):
            error = np.abs(got - ref).max() / np.abs(ref).max()
            print(f"mean / std {ratio}: {name} {error:.1e}")
            self.assertLessEqual(error, tol, name)
        np.testing.assert_allclose(mean, (1 - MOMENTUM) * want[4],
                                   rtol=2e-6)
        np.testing.assert_allclose(unbiased - MOMENTUM,
                                   (1 - MOMENTUM) * want[5], rtol=1e-5)
