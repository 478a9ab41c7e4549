"""DeepMind BYOL's Haiku ResNet v1 in raw ``tf.nn`` ops, for parity tests.

Written from Haiku's ``hk.nets.ResNet`` as BYOL uses it: 7x7/2 ``initial_conv``
("SAME", no bias), ``initial_batchnorm``, ReLU, 3x3/2 max-pool ("SAME");
``block_group_g/~/block_b`` bottlenecks (``conv_0`` 1x1, ``conv_1`` 3x3 with
the stride, ``conv_2`` 1x1 to 4x the width; ``shortcut_conv`` 1x1 with the
stride in each group's first block), each conv followed by its
``batchnorm_k``: ``(x - mean) * scale / sqrt(var + 1e-5) + offset`` with the
``average`` of ``mean_ema`` and ``var_ema``; ReLU after the sum; global mean.
Parameters are a dict of Haiku module paths to dicts of numpy arrays, state
likewise, as in the release's ``online_params`` / ``online_state``.
"""

import numpy as np
import tensorflow as tf

ROOT = "res_net50"


def _conv(params, name, x, stride):
    return tf.nn.conv2d(x, params[name]["w"], stride, "SAME")


def _bn(params, state, name, x, calibrate):
    if calibrate:  # set the averages to this batch's statistics
        mean, var = tf.nn.moments(x, axes=[0, 1, 2], keepdims=True)
        state[f"{name}/~/mean_ema"]["average"] = mean.numpy()
        state[f"{name}/~/var_ema"]["average"] = var.numpy()
    mean = state[f"{name}/~/mean_ema"]["average"]
    var = state[f"{name}/~/var_ema"]["average"]
    p = params[name]
    return (x - mean) * (p["scale"] * tf.math.rsqrt(var + 1e-5)) + p["offset"]


def forward(params, state, x, blocks, calibrate=False):
    """NHWC float images (normalised) -> pooled feature."""
    x = tf.constant(x, tf.float32)
    r = ROOT + "/~/"
    x = _conv(params, r + "initial_conv", x, 2)
    x = tf.nn.relu(_bn(params, state, r + "initial_batchnorm", x, calibrate))
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    for g, n in enumerate(blocks):
        for b in range(n):
            p = f"{r}block_group_{g}/~/block_{b}/~/"
            stride = 2 if (g > 0 and b == 0) else 1
            shortcut = x
            if b == 0:
                shortcut = _bn(params, state, p + "shortcut_batchnorm",
                               _conv(params, p + "shortcut_conv", x, stride),
                               calibrate)
            y = x
            for k, s in enumerate((1, stride, 1)):
                y = _bn(params, state, f"{p}batchnorm_{k}",
                        _conv(params, f"{p}conv_{k}", y, s), calibrate)
                if k < 2:
                    y = tf.nn.relu(y)
            x = tf.nn.relu(y + shortcut)
    return tf.reduce_mean(x, axis=[1, 2]).numpy()


def random_network(blocks=(1, 1, 1, 1), width=1, seed=0, branch_gain=0.3):
    """(params, state) of a random Haiku ResNet with the release's names;
    the last BatchNorm of each bottleneck scaled by ``branch_gain``."""
    rng = np.random.default_rng(seed)
    params, state = {}, {}

    def conv(name, k, cin, cout):
        params[name] = {"w": (rng.normal(size=(k, k, cin, cout)) * np.sqrt(
            2.0 / (k * k * cin))).astype(np.float32)}

    def bn(name, c, gain=1.0):
        params[name] = {
            "scale": (gain * rng.uniform(0.5, 1.5, (1, 1, 1, c))).astype(
                np.float32),
            "offset": (0.1 * rng.normal(size=(1, 1, 1, c))).astype(
                np.float32)}
        for ema in ("mean_ema", "var_ema"):
            value = np.ones((1, 1, 1, c), np.float32)
            state[f"{name}/~/{ema}"] = {"counter": np.int32(1000),
                                        "hidden": value.copy(),
                                        "average": value}
    r = ROOT + "/~/"
    conv(r + "initial_conv", 7, 3, 64 * width)
    bn(r + "initial_batchnorm", 64 * width)
    cin = 64 * width
    for g, n in enumerate(blocks):
        inner = 64 * width * 2 ** g
        for b in range(n):
            p = f"{r}block_group_{g}/~/block_{b}/~/"
            if b == 0:
                conv(p + "shortcut_conv", 1, cin, 4 * inner)
                bn(p + "shortcut_batchnorm", 4 * inner)
            for k, (size, a, c) in enumerate(((1, cin, inner),
                                              (3, inner, inner),
                                              (1, inner, 4 * inner))):
                conv(f"{p}conv_{k}", size, a, c)
                bn(f"{p}batchnorm_{k}", c, branch_gain if k == 2 else 1.0)
            cin = 4 * inner
    return params, state
