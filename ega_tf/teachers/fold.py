"""The frozen teacher with its BatchNorm folded into the convolutions.

A teacher never trains: its BatchNorm layers always apply their moving
statistics, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, an affine
map per channel. After a convolution that map folds into the convolution's
own weights,

    scale  = gamma / sqrt(var + eps)
    kernel = kernel * scale                 (per output channel)
    bias   = (bias - mean) * scale + beta,

and the network computes the same features (to float32 rounding) with one
op per layer fewer, and its convolution, bias and ReLU fused into one
kernel by TensorFlow's graph optimiser. Keras has no such pass (its
``BatchNormalization`` keeps the four statistics and applies them on every
call), so it is written here.

``fold_batchnorm`` rebuilds the teacher's layer graph with
``keras.models.clone_model`` (nested models too): a convolution whose output
goes only into a BatchNorm becomes a convolution with a bias and folded
weights, that BatchNorm an identity; every other layer is the teacher's own
layer object, shared. The teacher's file stays as converted; training folds
it when it loads it (``training.build.load_teacher``).
"""

from __future__ import annotations

import numpy as np

CONVOLUTIONS = ("Conv2D", "DepthwiseConv2D")


def _producer(tensor):
    return tensor._keras_history.operation


def foldable_pairs(model):
    """[(convolution, BatchNorm)] of ``model`` and its nested models that
    fold: the convolution (channels-last, used once, its output read only by
    the BatchNorm) feeds a BatchNorm (used once, over the last axis)."""
    import keras
    pairs = []
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        axis = layer.axis if isinstance(layer.axis, int) else None
        if len(layer._inbound_nodes) != 1 or axis not in (-1, 3):
            continue
        inputs = layer._inbound_nodes[0].input_tensors
        if len(inputs) != 1:
            continue
        conv = _producer(inputs[0])
        if (type(conv).__name__ not in CONVOLUTIONS
                or conv.data_format != "channels_last"
                or len(conv._inbound_nodes) != 1
                or len(conv._outbound_nodes) != 1):
            continue
        pairs.append((conv, layer))
    return pairs


def folded_weights(conv, bn):
    """(kernel, bias) of ``conv`` with ``bn`` folded in, computed in float64
    and rounded once to float32."""
    kernel = np.asarray(conv.kernel, np.float64)
    channels = bn.moving_mean.shape[0]
    bias = (np.asarray(conv.bias, np.float64) if conv.use_bias
            else np.zeros(channels))
    gamma = (np.asarray(bn.gamma, np.float64) if bn.scale
             else np.ones(channels))
    beta = (np.asarray(bn.beta, np.float64) if bn.center
            else np.zeros(channels))
    scale = gamma / np.sqrt(np.asarray(bn.moving_variance, np.float64)
                            + bn.epsilon)
    # Conv2D: [kh, kw, in, out]; depthwise: [kh, kw, in, multiplier], its
    # output channel c * multiplier + m.
    shaped = kernel * scale.reshape(kernel.shape[2:] if type(conv).__name__
                                    == "DepthwiseConv2D" else (-1,))
    return (shaped.astype(np.float32),
            ((bias - np.asarray(bn.moving_mean, np.float64)) * scale
             + beta).astype(np.float32))


def _identity_class():
    import keras

    class FoldedBatchNorm(keras.layers.Layer):
        """Where a folded BatchNorm was: passes its input on (and takes
        the arguments a BatchNorm is called with)."""

        def call(self, inputs, training=None, mask=None):
            return inputs

        def compute_output_shape(self, input_shape):
            return input_shape
    return FoldedBatchNorm


def fold_batchnorm(model):
    """(model with every foldable BatchNorm folded, number folded); the
    model itself when there is none."""
    import keras
    pairs = foldable_pairs(model)
    if not pairs:
        return model, 0
    convs = {id(c): (c, b) for c, b in pairs}
    norms = {id(b) for _, b in pairs}
    made = {}
    identity = _identity_class()

    def clone(layer):
        if id(layer) in convs:
            config = layer.get_config()
            config["use_bias"] = True
            # Its weights are the folded ones, assigned below: drawing
            # random initial ones first took half of the fold's time.
            for key in ("kernel_initializer", "depthwise_initializer",
                        "bias_initializer"):
                if key in config:
                    config[key] = "zeros"
            new = type(layer).from_config(config)
            made[id(layer)] = new
            return new
        if id(layer) in norms:
            return identity(name=layer.name)
        return layer  # shared: the teacher's own layer and weights

    folded = keras.models.clone_model(model, clone_function=clone,
                                      recursive=True)
    for key, (conv, bn) in convs.items():
        new = made[key]
        kernel, bias = folded_weights(conv, bn)
        new.kernel.assign(kernel)
        new.bias.assign(bias)
        new.trainable = False
    folded.trainable = model.trainable
    return folded, len(pairs)
