"""OpenAI CLIP's ModifiedResNet image encoder (RN50, RN101, RN50x4, ...).

Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021. Differences from a torchvision ResNet, all kept:

* stem of three 3x3 convs (stride 2 on the first; widths w/2, w/2, w), each
  BN-ReLU, then a 2x2 average pool instead of a max-pool;
* every bottleneck conv has stride 1; a stride-s block average-pools (s x s)
  after its 3x3 conv, and its shortcut is AvgPool(s) -> 1x1 conv -> BN;
* attention pooling: the (H*W) feature vectors plus their mean as an extra
  first token, a learned positional embedding, one multi-head attention with
  the mean token as the only query (heads = 32 * w / 64), projected to the
  embedding width (1024 for RN50, 512 for RN101).

Nothing in keras-hub or keras-cv provides this network, hence this file.
The attention is ``keras.layers.MultiHeadAttention``; the input resolution
is fixed by the positional embedding (224 for RN50).
"""

from __future__ import annotations

import math
import re

import keras
from keras import layers, ops

# PyTorch padding for strided convs and BN eps 1e-5, as the students use.
from ega_tf.core.errors import ConversionError
from ega_tf.nn.layers import bn as _bn
from ega_tf.nn.layers import conv as _conv
from ega_tf.teachers.porting import (WeightPorter, port_batchnorm,
                                     torch_conv_kernel, torch_dense_kernel)

_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")


@keras.saving.register_keras_serializable(package="ega_tf")
class AttentionPool2D(layers.Layer):
    """CLIP's attention pooling of an NHWC map into one vector."""

    def __init__(self, num_heads, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.output_dim = int(num_heads), int(output_dim)

    def build(self, input_shape):
        _, h, w, c = input_shape
        self.positional_embedding = self.add_weight(
            (h * w + 1, c), initializer=keras.initializers.RandomNormal(
                stddev=c**-0.5), name="positional_embedding")
        self.attention = layers.MultiHeadAttention(
            self.num_heads, c // self.num_heads, output_shape=self.output_dim,
            name="attention")
        self.attention.build((None, 1, c), (None, h * w + 1, c))

    def call(self, x):
        _, h, w, c = x.shape
        tokens = ops.reshape(x, (-1, h * w, c))
        tokens = ops.concatenate(
            [ops.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
        tokens = tokens + self.positional_embedding
        return self.attention(tokens[:, :1], tokens, tokens)[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "output_dim": self.output_dim}


def _bottleneck(x, planes, stride, name):
    out = layers.ReLU()(_bn(_conv(x, planes, 1, name=f"{name}_conv1"),
                            f"{name}_bn1"))
    out = layers.ReLU()(_bn(_conv(out, planes, 3, name=f"{name}_conv2"),
                            f"{name}_bn2"))
    if stride > 1:
        out = layers.AveragePooling2D(stride, name=f"{name}_avgpool")(out)
    out = _bn(_conv(out, planes * 4, 1, name=f"{name}_conv3"), f"{name}_bn3")
    if stride > 1 or x.shape[-1] != planes * 4:
        if stride > 1:
            x = layers.AveragePooling2D(stride, name=f"{name}_down_pool")(x)
        x = _bn(_conv(x, planes * 4, 1, name=f"{name}_downsample_0"),
                f"{name}_downsample_1")
    return layers.ReLU()(layers.Add()([out, x]))


def infer_arch(state):
    """Layer counts, width, output width and resolution from CLIP keys
    (``visual.`` already stripped)."""
    blocks = [0, 0, 0, 0]
    for key in state:
        m = _BLOCK.match(key)
        if m:
            s = int(m.group(1)) - 1
            blocks[s] = max(blocks[s], int(m.group(2)) + 1)
    if not all(blocks) or "attnpool.positional_embedding" not in state:
        raise ConversionError("Not a CLIP ModifiedResNet: expected visual.layer*"
                              " and visual.attnpool.* keys.")
    width = int(state["conv3.weight"].shape[0])
    tokens = int(state["attnpool.positional_embedding"].shape[0])
    return {"blocks": blocks, "width": width,
            "output_dim": int(state["attnpool.c_proj.weight"].shape[0]),
            "heads": width * 32 // 64,
            "resolution": 32 * math.isqrt(tokens - 1)}


def build(arch):
    """The Keras encoder (normalised float NHWC -> embedding), 'backbone'."""
    w, res = arch["width"], arch["resolution"]
    inputs = keras.Input((res, res, 3), name="pixels")
    x = inputs
    for i, (filters, stride) in enumerate(
            ((w // 2, 2), (w // 2, 1), (w, 1)), start=1):
        x = layers.ReLU()(_bn(_conv(x, filters, 3, stride, name=f"conv{i}"),
                              f"bn{i}"))
    x = layers.AveragePooling2D(2, name="avgpool")(x)
    for s, n in enumerate(arch["blocks"]):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            x = _bottleneck(x, w * 2**s, stride, name=f"layer{s + 1}_{b}")
    out = AttentionPool2D(arch["heads"], arch["output_dim"],
                          name="attnpool")(x)
    return keras.Model(inputs, out, name="backbone")


def port(model, state, ignore=()):
    """Copies CLIP ``visual.*`` tensors (prefix stripped) into ``build()``'s
    model, strictly; returns the keys used."""
    porter = WeightPorter(state, ignore=(*ignore, "*num_batches_tracked"))
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            porter.port(layer.kernel,
                        layer.name.replace("_", ".") + ".weight",
                        torch_conv_kernel)
        elif isinstance(layer, layers.BatchNormalization):
            port_batchnorm(porter, layer, layer.name.replace("_", "."))
    pool = model.get_layer("attnpool")
    c = pool.positional_embedding.shape[1]
    heads = pool.num_heads
    porter.port(pool.positional_embedding, "attnpool.positional_embedding")
    att = pool.attention
    for dense, proj in ((att.query_dense, "q"), (att.key_dense, "k"),
                        (att.value_dense, "v")):
        porter.port(dense.kernel, f"attnpool.{proj}_proj.weight",
                    lambda w: torch_dense_kernel(w).reshape(c, heads, -1))
        porter.port(dense.bias, f"attnpool.{proj}_proj.bias",
                    lambda b: b.reshape(heads, -1))
    porter.port(att.output_dense.kernel, "attnpool.c_proj.weight",
                lambda w: torch_dense_kernel(w).reshape(heads, -1, w.shape[0]))
    porter.port(att.output_dense.bias, "attnpool.c_proj.bias")
    return porter.finish()
