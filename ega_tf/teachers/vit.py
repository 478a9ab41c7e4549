"""timm-style Vision Transformers: DINO and MoCo v3 (ViT-S/16, B/16, S/8, ...).

Dosovitskiy et al., ICLR 2021, in the layout the DINO and MoCo v3 releases
use: a patch conv with bias, a class token, a learned (DINO) or fixed
sin-cos (MoCo v3, stored in the file all the same) positional embedding over
class token + patches, pre-norm blocks (LayerNorm eps 1e-6, one fused ``qkv``
Linear with bias, exact GELU MLP), and a final LayerNorm. The embedding is
the class token after the final norm (384 for ViT-S, 768 for ViT-B).

The network is ``keras_hub.models.ViTBackbone`` built from arguments read off
the checkpoint (width, depth, MLP width, patch size, resolution from the
positional embedding) plus ``ClassToken``. The head count cannot be read off
the weights: DINO uses width / 64 (6 for ViT-S), MoCo v3 uses 12 for ViT-S
too; the family supplies it. The fused ``qkv`` weight is split into the
query, key and value kernels of Keras's ``MultiHeadAttention``.
"""

from __future__ import annotations

import math
import re

import keras
from keras import layers, ops

from ega_tf.core.errors import ConversionError
from ega_tf.teachers.porting import (WeightPorter, torch_conv_kernel,
                                     torch_dense_kernel)

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@keras.saving.register_keras_serializable(package="ega_tf")
class ClassToken(layers.Layer):
    """The first token of a ``[N, T, D]`` sequence: ``[N, D]``."""

    def call(self, tokens):
        return tokens[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


# What a token sequence [N, T, D] gives as the teacher's feature: the
# class token (first), the mean of the tokens after the prefix (class token,
# registers), or both concatenated ([N, 2D]). Keys are the names of
# --feature (published ViTs) and --pool (a model of the user's).
POOLS = ("cls", "mean", "cls_mean")
FEATURES = {"cls": "cls", "cls_patchmean": "cls_mean"}


@keras.saving.register_keras_serializable(package="ega_tf")
class TokenPool(layers.Layer):
    """``[N, T, D]`` tokens -> ``[N, D]`` (``cls``, ``mean``) or ``[N, 2D]``
    (``cls_mean``). ``prefix`` tokens (class token, registers) are left out
    of the mean."""

    def __init__(self, mode="cls", prefix=1, **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLS:
            raise ValueError(f"mode must be one of {POOLS}; got {mode!r}")
        self.mode, self.prefix = mode, int(prefix)

    def call(self, tokens):
        parts = []
        if self.mode in ("cls", "cls_mean"):
            parts.append(tokens[:, 0])
        if self.mode in ("mean", "cls_mean"):
            parts.append(ops.mean(tokens[:, self.prefix:], axis=1))
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, -1)

    def compute_output_shape(self, input_shape):
        width = input_shape[-1]
        return (input_shape[0],
                2 * width if self.mode == "cls_mean" and width else width)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode,
                "prefix": self.prefix}


_SIZES = {384: "s", 768: "b", 1024: "l", 1280: "h", 1536: "g", 4096: "7b"}


def network_name(width, patch, plus=False, registers=0):
    """The publisher's name of a DINO ViT (vits14, vitl16plus, vitb14_reg4)."""
    size = _SIZES.get(width)
    name = (f"vit{size}{patch}" if size else f"vit_d{width}_p{patch}") + (
        "plus" if plus else "")
    return name + (f"_reg{registers}" if registers else "")


def check_feature(feature):
    from ega_tf.core.registry import check_choice
    check_choice("feature", feature, list(FEATURES))
    return feature


def wrap_tokens(net, size, feature, prefix, mode=None):
    """A keras-hub backbone ``net`` returning tokens -> the ``feature``
    (``FEATURES``; or the ``TokenPool`` ``mode``) of ``size`` x ``size``
    images; the model named 'backbone'. ``prefix``: the class token and
    registers."""
    inputs = keras.Input((size, size, 3), name="pixels")
    key = next(iter(net.input)) if isinstance(net.input, dict) else None
    tokens = net({key: inputs} if key else inputs)
    pooled = TokenPool(mode or FEATURES[feature], prefix=prefix,
                       name="pool")(tokens)
    return keras.Model(inputs, pooled, name="backbone")


def infer_arch(state, num_heads=None, head_dim=None):
    """Width, depth, MLP width, patch size and resolution from timm keys;
    heads from ``num_heads`` or ``width // head_dim``."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise ConversionError("Not a timm-style ViT: expected patch_embed.proj.*,"
                              " pos_embed, cls_token and blocks.* keys.")
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(_BLOCK.match(k).group(1)) for k in state
                    if _BLOCK.match(k))
    tokens = int(state["pos_embed"].shape[1])
    heads = num_heads or int(width) // (head_dim or 64)
    return {"width": int(width), "depth": depth, "heads": heads,
            "mlp_dim": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
            "patch": int(patch),
            "resolution": int(patch) * math.isqrt(tokens - 1)}


def build(arch):
    """The Keras encoder (normalised float NHWC -> class token), named
    'backbone'."""
    import keras_hub
    res = arch["resolution"]
    vit = keras_hub.models.ViTBackbone(
        image_shape=(res, res, 3), patch_size=arch["patch"],
        num_layers=arch["depth"], num_heads=arch["heads"],
        hidden_dim=arch["width"], mlp_dim=arch["mlp_dim"],
        layer_norm_epsilon=1e-6, name="vit")
    inputs = keras.Input((res, res, 3), name="pixels")
    return keras.Model(inputs, ClassToken(name="class_token")(vit(inputs)),
                       name="backbone")


def port_attention(porter, mha, fused_w, fused_b, out_w, out_b):
    """A fused PyTorch in-projection ``(3D, D)`` (timm ``qkv``, or
    ``nn.MultiheadAttention``'s ``in_proj``) and its output Linear into a
    Keras ``MultiHeadAttention``."""
    d = porter.source[fused_w].shape[1] if fused_w in porter.source else 0
    heads = mha.num_heads
    for i, dense in enumerate((mha.query_dense, mha.key_dense,
                               mha.value_dense)):
        porter.port(dense.kernel, fused_w, lambda w, i=i: torch_dense_kernel(
            w[i * d:(i + 1) * d]).reshape(d, heads, -1))
        porter.port(dense.bias, fused_b,
                    lambda b, i=i: b[i * d:(i + 1) * d].reshape(heads, -1))
    porter.port(mha.output_dense.kernel, out_w,
                lambda w: torch_dense_kernel(w).reshape(heads, -1, w.shape[0]))
    porter.port(mha.output_dense.bias, out_b)


def port_layer_norm(porter, layer, key):
    porter.port(layer.gamma, f"{key}.weight")
    porter.port(layer.beta, f"{key}.bias")


def port_dense(porter, layer, key):
    porter.port(layer.kernel, f"{key}.weight", torch_dense_kernel)
    porter.port(layer.bias, f"{key}.bias")


def port(model, state, ignore=()):
    """Copies timm ViT tensors into ``build()``'s model, strictly; returns
    the keys used."""
    porter = WeightPorter(state, ignore=ignore)
    vit = model.get_layer("vit")
    emb = vit.get_layer("vit_patching_and_embedding")
    porter.port(emb.class_token, "cls_token")
    porter.port(emb.position_embedding.embeddings, "pos_embed",
                lambda p: p[0])
    porter.port(emb.patch_embedding.kernel, "patch_embed.proj.weight",
                torch_conv_kernel)
    porter.port(emb.patch_embedding.bias, "patch_embed.proj.bias")
    encoder = vit.get_layer("vit_encoder")
    for i, block in enumerate(encoder.encoder_layers):
        key = f"blocks.{i}"
        port_layer_norm(porter, block.layer_norm_1, f"{key}.norm1")
        port_attention(porter, block.mha, f"{key}.attn.qkv.weight",
                       f"{key}.attn.qkv.bias", f"{key}.attn.proj.weight",
                       f"{key}.attn.proj.bias")
        port_layer_norm(porter, block.layer_norm_2, f"{key}.norm2")
        port_dense(porter, block.mlp.dense_1, f"{key}.mlp.fc1")
        port_dense(porter, block.mlp.dense_2, f"{key}.mlp.fc2")
    port_layer_norm(porter, encoder.layer_norm, "norm")
    return porter.finish()
