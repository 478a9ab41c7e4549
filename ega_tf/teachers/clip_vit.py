"""CLIP's Vision Transformer image encoder (ViT-B/32, B/16, L/14, ...).

OpenAI CLIP's layout (also open_clip's): a patch conv without bias, a class
embedding, a positional embedding, ``ln_pre``, pre-norm residual blocks
(``nn.MultiheadAttention`` with a fused ``in_proj``, an MLP ``c_fc`` ->
activation -> ``c_proj``), ``ln_post`` on the class token, then ``@ proj``.
LayerNorm eps is 1e-5. ``proj`` is stored as (width, output): it is the
Keras kernel as it is, no transpose. The activation is QuickGELU
``x * sigmoid(1.702 x)`` for OpenAI's weights (and open_clip's openai,
LAION-400M and MetaCLIP tags), the exact GELU for open_clip's other tags:
it cannot be read off the weights, so the family says which.

The network is ``keras_hub.models.CLIPVisionEncoder`` built from arguments
read off the checkpoint (heads = width / 64, as CLIP builds them), the class
token, and a bias-free Dense for ``proj``.
"""

from __future__ import annotations

import math
import re

import keras
import numpy as np

from ega_tf.core.errors import ConversionError
from ega_tf.teachers.porting import WeightPorter, torch_conv_kernel
from ega_tf.teachers.vit import (ClassToken, port_attention, port_dense,
                                 port_layer_norm)

_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def infer_arch(state, activation="quick_gelu"):
    """Width, depth, patch, resolution and output width from CLIP ``visual.``
    keys (prefix stripped)."""
    if "class_embedding" not in state or "conv1.weight" not in state:
        raise ConversionError("Not a CLIP ViT: expected visual.conv1, "
                              "visual.class_embedding and visual.transformer.*.")
    width, _, patch, _ = state["conv1.weight"].shape
    depth = 1 + max(int(_BLOCK.match(k).group(1)) for k in state
                    if _BLOCK.match(k))
    tokens = int(state["positional_embedding"].shape[0])
    return {"width": int(width), "depth": depth, "heads": int(width) // 64,
            "mlp_dim": int(state["transformer.resblocks.0.mlp.c_fc.weight"]
                           .shape[0]),
            "patch": int(patch), "output_dim": int(state["proj"].shape[1]),
            "resolution": int(patch) * math.isqrt(tokens - 1),
            "activation": activation}


def build(arch):
    """The Keras encoder (normalised float NHWC -> image embedding), named
    'backbone'."""
    import keras_hub
    res = arch["resolution"]
    encoder = keras_hub.models.CLIPVisionEncoder(
        patch_size=arch["patch"], hidden_dim=arch["width"],
        num_layers=arch["depth"], num_heads=arch["heads"],
        intermediate_dim=arch["mlp_dim"],
        intermediate_activation=arch["activation"],
        image_shape=(res, res, 3), name="clip_vit")
    inputs = keras.Input((res, res, 3), name="pixels")
    x = ClassToken(name="class_token")(encoder({"images": inputs}))
    out = keras.layers.Dense(arch["output_dim"], use_bias=False,
                             name="proj")(x)
    return keras.Model(inputs, out, name="backbone")


def port(model, state, ignore=()):
    """Copies CLIP ``visual.*`` tensors (prefix stripped) into ``build()``'s
    model, strictly; returns the keys used."""
    porter = WeightPorter(state, ignore=ignore)
    encoder = model.get_layer("clip_vit")
    emb = encoder.embedding
    porter.port(emb.patch_embedding.kernel, "conv1.weight", torch_conv_kernel)
    porter.port(emb.class_embedding, "class_embedding")
    porter.port(emb.position_embedding.embeddings, "positional_embedding")
    # keras-hub initialises the position ids to zeros and expects its own
    # converters to load them; they are simply 0..T-1.
    emb.position_ids.assign(np.arange(emb.num_positions)[None].astype(
        emb.position_ids.dtype))
    port_layer_norm(porter, encoder.pre_layer_norm, "ln_pre")
    for i, block in enumerate(encoder.encoder_layers):
        key = f"transformer.resblocks.{i}"
        port_layer_norm(porter, block.layer_norm_1, f"{key}.ln_1")
        port_attention(porter, block.attention, f"{key}.attn.in_proj_weight",
                       f"{key}.attn.in_proj_bias",
                       f"{key}.attn.out_proj.weight",
                       f"{key}.attn.out_proj.bias")
        port_layer_norm(porter, block.layer_norm_2, f"{key}.ln_2")
        port_dense(porter, block.dense_1, f"{key}.mlp.c_fc")
        port_dense(porter, block.dense_2, f"{key}.mlp.c_proj")
    port_layer_norm(porter, encoder.layer_norm, "ln_post")
    porter.port(model.get_layer("proj").kernel, "proj")
    return porter.finish()
