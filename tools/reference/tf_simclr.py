"""SimCLR's ResNet as its TF1 code computes it, for parity tests.

``variables`` makes random weights under the names the published SimCLR
checkpoints use (``base_model/conv2d[_N]/kernel``,
``base_model/batch_normalization[_N]/...``, numbered in creation order:
stem; per block the projection shortcut first, then the three bottleneck
convs), ``save_tf1`` writes them as TF1's name-based ``Saver`` does (plus
heads, optimizer slots and a global step, as in the published files), and
``forward`` runs the network with raw ``tf.nn`` ops the way SimCLR's code
does: fixed padding ((k - 1) // 2 before, the rest after) and a VALID conv
for strided convs, SAME otherwise; a SAME 3x3/2 max-pool; inference BN with
eps 1e-5; global average pooling.
"""

import numpy as np
import tensorflow as tf

EPS = 1e-5


def _plan(blocks, width):
    """(kind, shape info) of every conv/BN in creation order."""
    convs = [(7, 3, 64 * width, 2)]  # kernel, cin, cout, stride
    cin = 64 * width
    for stage, n in enumerate(blocks):
        f = 64 * width * 2**stage
        for b in range(n):
            stride = 2 if (stage > 0 and b == 0) else 1
            if b == 0:
                convs.append((1, cin, 4 * f, stride))
            convs += [(1, cin, f, 1), (3, f, f, stride), (1, f, 4 * f, 1)]
            cin = 4 * f
    return convs


def _name(base, i):
    return base if i == 0 else f"{base}_{i}"


def variables(blocks=(3, 4, 6, 3), width=1, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i, (k, cin, cout, _) in enumerate(_plan(blocks, width)):
        std = np.sqrt(2.0 / (k * k * cin))
        out[f"base_model/{_name('conv2d', i)}/kernel"] = rng.normal(
            0, std, (k, k, cin, cout)).astype(np.float32)
        bn = f"base_model/{_name('batch_normalization', i)}"
        out[f"{bn}/gamma"] = rng.uniform(0.3, 0.8, cout).astype(np.float32)
        out[f"{bn}/beta"] = rng.normal(0, 0.1, cout).astype(np.float32)
        out[f"{bn}/moving_mean"] = rng.normal(0, 0.2, cout).astype(np.float32)
        out[f"{bn}/moving_variance"] = rng.uniform(0.5, 1.5, cout).astype(
            np.float32)
    return out


def _with_extras(weights):
    """``weights`` plus what the published files also hold: the heads,
    some optimizer slots and the global step."""
    allv = dict(weights)
    rng = np.random.default_rng(1)
    allv["head_contrastive/nl_0/dense/kernel"] = rng.normal(
        size=(8, 8)).astype(np.float32)
    allv["head_supervised/linear_layer/dense/kernel"] = rng.normal(
        size=(8, 4)).astype(np.float32)
    for k in list(weights)[:3]:
        allv[k + "/Momentum"] = np.zeros_like(weights[k])
    allv["global_step"] = np.int64(1000)
    return allv


def save_tf1(weights, prefix, extras=True):
    """Writes ``weights`` as a TF1 name-based checkpoint at ``prefix``
    (``prefix.index``, ``prefix.data-00000-of-00001``), as TF1's ``Saver``
    writes them: its ``SaveV2`` op on the variables sorted by name, in
    eager mode, without a TF1 graph and session holding a copy of every
    tensor as a constant. ``save_tf1_with_saver`` is the Saver itself;
    tests/test_convert_simclr.py holds the two byte for byte."""
    allv = _with_extras(weights) if extras else dict(weights)
    names = sorted(allv)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(allv[n]) for n in names])
    return prefix


def save_tf1_with_saver(weights, prefix, extras=True):
    """``save_tf1`` by TF1's name-based ``Saver`` in a graph and session,
    as SimCLR's code saves (it also writes ``prefix.meta`` and the
    directory's ``checkpoint`` file)."""
    allv = _with_extras(weights) if extras else dict(weights)
    with tf.Graph().as_default():
        tf_vars = [tf.compat.v1.get_variable(
            name, initializer=tf.constant(value)) for name, value in
            allv.items()]
        saver = tf.compat.v1.train.Saver(tf_vars)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, prefix)


def forward(weights, x, blocks=(3, 4, 6, 3), width=1, pool="SAME"):
    """The pooled feature of float NHWC images ``x`` in [0, 1].

    ``pool="torch"`` pads the stem max-pool by 1 on every side instead, as
    PyTorch ports of SimCLR do (to show that it differs)."""
    index = {"i": 0}

    def conv_bn(x, relu=True):
        i = index["i"]
        index["i"] += 1
        k, _, _, stride = plan[i]
        w = weights[f"base_model/{_name('conv2d', i)}/kernel"]
        if stride > 1:
            total = k - 1
            x = tf.pad(x, [[0, 0], [total // 2, total - total // 2],
                           [total // 2, total - total // 2], [0, 0]])
        x = tf.nn.conv2d(x, w, stride, "VALID" if stride > 1 else "SAME")
        bn = f"base_model/{_name('batch_normalization', i)}"
        x = tf.nn.batch_normalization(
            x, weights[f"{bn}/moving_mean"], weights[f"{bn}/moving_variance"],
            weights[f"{bn}/beta"], weights[f"{bn}/gamma"], EPS)
        return tf.nn.relu(x) if relu else x

    plan = _plan(blocks, width)
    x = conv_bn(tf.constant(x))
    if pool == "torch":
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]],
                   constant_values=float("-inf"))
        x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    else:
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    for stage, n in enumerate(blocks):
        for b in range(n):
            shortcut = conv_bn(x, relu=False) if b == 0 else x
            y = conv_bn(conv_bn(x))
            y = conv_bn(y, relu=False)
            x = tf.nn.relu(y + shortcut)
    return tf.reduce_mean(x, [1, 2]).numpy()


def eval_preprocess(image_uint8, res=224, fraction=0.875):
    """SimCLR's evaluation preprocessing of one uint8 HWC image: to [0, 1],
    centre crop ``rint(fraction * shorter side)`` at offset
    ``(side - crop + 1) // 2``, bicubic to ``res``, clip; ``[1, res, res, 3]``.
    """
    x = tf.image.convert_image_dtype(image_uint8, tf.float32)
    h, w = x.shape[:2]
    crop = int(np.rint(fraction * min(h, w)))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    x = x[top:top + crop, left:left + crop]
    x = tf.image.resize(x[None], (res, res), method="bicubic")
    return tf.clip_by_value(x, 0.0, 1.0).numpy()
