"""PyTorch-compatible building blocks, shared by students, teachers and the
distiller.

The students reproduce the RepDistiller (Tian et al., ICLR 2020) CIFAR models
that EGA's published code trains, layer for layer, and the teachers hold
PyTorch checkpoints, so these blocks keep PyTorch's behaviour where Keras's
defaults differ:

* strided convolutions pad symmetrically (``ZeroPadding2D(k // 2)`` then a
  ``'valid'`` convolution); TF's ``'same'`` puts the extra pixel at the end
  and would shift every feature map by one pixel;
* BatchNorm uses PyTorch's epsilon (1e-5) and momentum (0.1, i.e. Keras 0.9);
* convolutions are initialised as RepDistiller does (Kaiming normal, fan-out)
  and linear layers as ``torch.nn.Linear`` does.

Every layer gets its own initializer object. A Keras initializer created
without a seed draws one when it is constructed (from Python's ``random``,
which ``keras.utils.set_random_seed`` seeds), so one shared instance would
give every kernel of the same shape the same values, and a module-level one
would ignore the run's seed.
"""

from __future__ import annotations

import math

import keras
from keras import layers


def conv_initializer():
    """Kaiming normal, fan-out (RepDistiller's ``kaiming_normal_``)."""
    return keras.initializers.VarianceScaling(2.0, "fan_out",
                                              "untruncated_normal")


def conv(x, filters, kernel, stride=1, groups=1, use_bias=False, name=None):
    """A Conv2D with PyTorch's ``padding=kernel // 2`` semantics."""
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2,
                                 name=name and f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                         groups=groups, use_bias=use_bias,
                         kernel_initializer=conv_initializer(), name=name)(x)


def depthwise(x, kernel, stride=1, name=None):
    """A depthwise convolution with PyTorch padding, no bias."""
    if stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=name and f"{name}_pad")(x)
    return layers.DepthwiseConv2D(
        kernel, strides=stride, padding="valid" if stride > 1 else "same",
        use_bias=False, depthwise_initializer=conv_initializer(),
        name=name)(x)


@keras.saving.register_keras_serializable(package="ega_tf")
class BatchNorm(layers.BatchNormalization):
    """PyTorch's BatchNorm2d on TensorFlow's fused kernel.

    Keras's BatchNormalization computes the batch moments and the
    normalisation with a dozen separate operations, forward and backward;
    on a 4-D channels-last input this layer calls TensorFlow's fused
    batch-norm kernel instead (``FusedBatchNormV3``: one operation each way,
    and with oneDNN fused with the ReLU after it), which makes the
    student's forward and backward shorter (measured in docs/speed.md).
    The arithmetic is the same
    normalisation to float32 rounding (tests/test_fused_batchnorm.py holds
    outputs, gradients and statistics against Keras's path and a float64
    reference).

    Two things differ from Keras and follow PyTorch, whose recipe the
    students reproduce: the moving variance is updated with the unbiased
    batch variance (n / (n - 1) times the biased one used to normalise),
    as ``torch.nn.BatchNorm2d`` does; and with ``synchronized`` statistics
    on several replicas (the fused kernel cannot reduce across them) the
    global batch's mean and variance are taken across the replicas, in
    two passes as the fused kernel takes them, and normalise explicitly,
    with the same unbiased update over the global count.

    The moving statistics are averaged over the replicas of a
    ``tf.distribute`` strategy: Keras creates them with no aggregation, so
    with per-replica batch statistics (``synchronize_batchnorm(model,
    False)``) each replica's copy would drift from the others and
    evaluation would depend on the number of devices."""

    def add_weight(self, *args, **kwargs):
        if kwargs.get("name") in ("moving_mean", "moving_variance"):
            kwargs["aggregation"] = "mean"
        return super().add_weight(*args, **kwargs)

    def _fusable(self, inputs, mask):
        return (mask is None and not self.renorm and len(inputs.shape) == 4
                and self.axis in (-1, 3, [3], [-1]))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf
        x = tf.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = (tf.cast(self.gamma, "float32") if self.scale
                 else tf.ones((channels,)))
        beta = (tf.cast(self.beta, "float32") if self.center
                else tf.zeros((channels,)))
        if not (training and self.trainable):
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"),
                epsilon=self.epsilon, is_training=False)
            return tf.cast(y, self.compute_dtype)
        ctx = tf.distribute.get_replica_context()
        if self.synchronized and ctx is not None and \
                ctx.num_replicas_in_sync > 1:
            y, mean, unbiased = self._synchronized(x, gamma, beta, ctx)
        else:
            y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m
                                    + unbiased * (1.0 - m))
        return tf.cast(y, self.compute_dtype)

    def _synchronized(self, x, gamma, beta, ctx):
        """(normalised x, global mean, global unbiased variance) in two
        passes over the global batch, as the fused kernel takes them over
        its one: the mean from the replicas' sums, then the variance from
        their sums of squared deviations from that mean.

        Summing x and x squared in one pass instead (the variance as
        E[x^2] - E[x]^2) loses (mean / std)^2 times float32's precision
        to cancellation: against float64, 5e-3 of the variance where a
        channel's mean is 100 times its spread (the fused kernel: 2e-6),
        and at 1000 times a variance rounded to 0 (docs/notes.md). The
        second pass costs one more all-reduce of one value per channel:
        about 4 % of a two-replica step on two CPU devices."""
        import tensorflow as tf
        axes = [0, 1, 2]
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), "float32")
        sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(
            [count[None], tf.reduce_sum(x, axes)], 0))
        count, mean = sums[0], sums[1:] / sums[0]
        # d(variance)/d(mean) is zero: the deviations sum to zero.
        squares = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(
            tf.math.squared_difference(x, tf.stop_gradient(mean)), axes))
        variance = squares / count
        y = tf.nn.batch_normalization(x, mean, variance, beta, gamma,
                                      self.epsilon)
        return (y, tf.stop_gradient(mean), tf.stop_gradient(
            variance * count / tf.maximum(count - 1.0, 1.0)))


def bn(x, name=None):
    return BatchNorm(momentum=0.9, epsilon=1e-5, name=name)(x)


def relu(x, name=None):
    return layers.ReLU(name=name)(x)


def conv_bn(x, filters, kernel, stride=1, groups=1, act=True, name=None):
    x = conv(x, filters, kernel, stride, groups, name=name and f"{name}_conv")
    x = bn(x, name=name and f"{name}_bn")
    return relu(x) if act else x


def torch_dense(units, fan_in, name=None, dtype=None):
    """A Dense layer initialised like ``torch.nn.Linear(fan_in, units)``."""
    bound = 1.0 / math.sqrt(fan_in)
    return layers.Dense(
        units, name=name, dtype=dtype,
        kernel_initializer=keras.initializers.VarianceScaling(
            1.0 / 3.0, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound))


def batchnorm_layers(model):
    """Every BatchNormalization layer inside ``model``, nested ones too."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, layers.BatchNormalization)]


def synchronize_batchnorm(model, synchronized=True):
    """Makes the BatchNorm layers of ``model`` use statistics over all
    replicas of a ``tf.distribute`` strategy (the single-device recipe on N
    devices), or per replica; returns how many layers were set."""
    found = batchnorm_layers(model)
    for layer in found:
        layer.synchronized = bool(synchronized)
    return len(found)


@keras.saving.register_keras_serializable(package="ega_tf")
class ReverseChannels(layers.Layer):
    """RGB -> BGR (the last axis reversed), for students whose input is
    normalised in BGR order (keras.applications' "caffe" networks)."""

    def call(self, x):
        return x[..., ::-1]


@keras.saving.register_keras_serializable(package="ega_tf")
class ChannelShuffle(layers.Layer):
    """ShuffleNet's channel shuffle in NHWC: channels (g, C/g) -> (C/g, g).

    Same permutation as PyTorch's ``view(N, g, C/g, H, W).transpose(1, 2)``.
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, x):
        shape = keras.ops.shape(x)
        c = x.shape[-1]
        x = keras.ops.reshape(
            x, (-1, shape[1], shape[2], self.groups, c // self.groups))
        x = keras.ops.transpose(x, (0, 1, 2, 4, 3))
        return keras.ops.reshape(x, (-1, shape[1], shape[2], c))

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="ega_tf")
class ChannelSlice(layers.Layer):
    """Channels ``[start, stop)`` of an NHWC tensor (ShuffleNetV2's split)."""

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def call(self, x):
        return x[..., self.start:self.stop]

    def get_config(self):
        return {**super().get_config(), "start": self.start,
                "stop": self.stop}
