"""DINOv2 Vision Transformers (ViT-S/14, B/14, L/14, g/14, with or without
registers) in keras-hub's ``DINOV2Backbone``.

Oquab et al., "DINOv2: Learning Robust Visual Features without
Supervision", 2023. The publisher's hub files are plain state dicts:
``cls_token``, ``pos_embed`` (stored for 518 px: 37 x 37 patches of 14),
``register_tokens`` (the ``_reg`` files), ``mask_token``,
``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
norm2, mlp.fc1/fc2 (ViT-g: mlp.w12/w3, SwiGLU), ls2.gamma}`` and ``norm``.
Width, depth, MLP, patch size and registers are read off the shapes; two
choices are not in the weights and the family states them:

- heads: width / 64 (6, 12, 16, 24 for S, B, L, g);
- how the position table is resized to the input (``position_tables``):
  files without registers use a scale factor (patches + 0.1) / 37, the
  ``_reg`` files the output size with antialiasing.

The table is resized once, here, to the teacher's input size (224 by
default, ``--input_size``), and keras-hub's backbone is built for that
size with its "training" size set to it too, so it resizes nothing, now or
when the ``.keras`` file is read back.

The embedding is what the publisher's ``model(x)`` returns, the class token
after the final LayerNorm (384, 768, 1024, 1536 wide); ``feature=
cls_patchmean`` gives its linear evaluation's input instead: that class
token and the mean of the patch tokens (registers left out), twice as wide.
"""

from __future__ import annotations

import math
import re

from ega_tf.core.errors import ConversionError, UserError
from ega_tf.teachers import position_tables
from ega_tf.teachers.porting import WeightPorter, torch_conv_kernel
from ega_tf.teachers.vit import (check_feature, network_name, port_attention,
                                 port_dense, port_layer_norm, wrap_tokens)

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# The position tables of the publisher's two kinds of file.
PUBLISHER_POSITIONS = {False: ("scale", 0.1), True: ("antialias", 0.0)}
DEFAULT_INPUT_SIZE = 224


def swiglu_hidden(intermediate_dim):
    """keras-hub's (and DINOv2's) SwiGLU width for an MLP width."""
    return (int(intermediate_dim * 2 / 3) + 7) // 8 * 8


def check_input_size(size, patch):
    if size < patch or size % patch:
        near = max(patch, round(size / patch) * patch)
        raise UserError(f"--input_size={size} is not a multiple of the "
                        f"patch size {patch}; e.g. {near}.")


def vit_shape(state, what, needed):
    """(width, patch, depth) of a DINO ViT state dict holding ``needed``
    keys and ``blocks.N.*``; a ConversionError naming ``what`` if not."""
    needed = ("patch_embed.proj.weight", "cls_token", "norm.weight",
              *needed)
    blocks = [int(_BLOCK.match(k).group(1)) for k in state if _BLOCK.match(k)]
    if any(k not in state for k in needed) or not blocks:
        raise ConversionError(f"Not a {what}: expected " + ", ".join(needed)
                              + " and blocks.N.* keys.")
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    return int(width), int(patch), 1 + max(blocks)


def infer_arch(state, head_dim=64, input_size=None, feature="cls"):
    """Sizes from the publisher's keys; heads width / ``head_dim``."""
    width, patch, depth = vit_shape(state, "DINOv2 ViT", ("pos_embed",))
    swiglu = "blocks.0.mlp.w12.weight" in state
    if swiglu:
        hidden = int(state["blocks.0.mlp.w12.weight"].shape[0]) // 2
        mlp_dim = int(round(hidden * 3 / 2))
        if swiglu_hidden(mlp_dim) != hidden:
            raise ConversionError(f"A SwiGLU MLP {hidden} wide is not one "
                                  "DINOv2's rule makes from an MLP width.")
    else:
        mlp_dim = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    registers = (int(state["register_tokens"].shape[1])
                 if "register_tokens" in state else 0)
    side = math.isqrt(int(state["pos_embed"].shape[1]) - 1)
    size = int(input_size or DEFAULT_INPUT_SIZE)
    check_input_size(size, patch)
    rule, offset = PUBLISHER_POSITIONS[bool(registers)]
    return {"network": network_name(width, patch, registers=registers),
            "width": width, "depth": depth, "heads": width // head_dim,
            "mlp_dim": mlp_dim, "swiglu": swiglu, "registers": registers,
            "patch": patch, "stored_resolution": side * patch,
            "resolution": size, "positions": rule, "positions_offset": offset,
            "feature": check_feature(feature)}


def build(arch):
    """keras-hub's DINOv2 at the input size (float NHWC -> the feature),
    named 'backbone'."""
    import keras_hub
    size = arch["resolution"]
    net = keras_hub.models.DINOV2Backbone(
        patch_size=arch["patch"], num_layers=arch["depth"],
        hidden_dim=arch["width"], num_heads=arch["heads"],
        intermediate_dim=arch["mlp_dim"],
        num_register_tokens=arch["registers"],
        use_swiglu_ffn=arch["swiglu"], image_shape=(size, size, 3),
        position_embedding_shape=(size, size, 3), name="dinov2")
    return wrap_tokens(net, size, arch["feature"], 1 + arch["registers"])


def set_positions(net, table, rule, offset=0.0):
    """Resizes ``table`` [1, 1 + n*n, D] to ``net``'s input by ``rule`` and
    stores it as both of keras-hub's tables (the stored one and the one it
    uses), so that neither loading nor saving resizes it again."""
    emb = net.embeddings
    side = net.image_shape[0] // net.patch_size
    resized = position_tables.resize(table, side, rule, offset)
    emb.position_embeddings.assign(resized)
    emb.interpolated_position_embeddings.assign(resized)


def port(model, state, ignore=()):
    """Copies the publisher's tensors into ``build()``'s model, strictly;
    returns the keys used."""
    porter = WeightPorter(state, ignore=ignore)
    net = model.get_layer("dinov2")
    emb = net.embeddings
    porter.port(emb.cls_token, "cls_token")
    porter.port(emb.mask_token, "mask_token")
    if net.num_register_tokens:
        porter.port(emb.register_tokens, "register_tokens")
    # Two tables to set, resized: not a one-to-one port (infer_arch
    # required the key).
    set_positions(net, state["pos_embed"],
                  *PUBLISHER_POSITIONS[bool(net.num_register_tokens)])
    porter.used.add("pos_embed")
    porter.port(emb.patch_embeddings.projection.kernel,
                "patch_embed.proj.weight", torch_conv_kernel)
    porter.port(emb.patch_embeddings.projection.bias, "patch_embed.proj.bias")
    for i, layer in enumerate(net.encoder.layers):
        key = f"blocks.{i}"
        port_layer_norm(porter, layer.norm1, f"{key}.norm1")
        port_attention(porter, layer.attention.attention,
                       f"{key}.attn.qkv.weight", f"{key}.attn.qkv.bias",
                       f"{key}.attn.proj.weight", f"{key}.attn.proj.bias")
        porter.port(layer.layer_scale1.lambda1, f"{key}.ls1.gamma")
        port_layer_norm(porter, layer.norm2, f"{key}.norm2")
        if net.use_swiglu_ffn:
            port_dense(porter, layer.mlp.weights_in, f"{key}.mlp.w12")
            port_dense(porter, layer.mlp.weights_out, f"{key}.mlp.w3")
        else:
            port_dense(porter, layer.mlp.fc1, f"{key}.mlp.fc1")
            port_dense(porter, layer.mlp.fc2, f"{key}.mlp.fc2")
        porter.port(layer.layer_scale2.lambda1, f"{key}.ls2.gamma")
    port_layer_norm(porter, net.layernorm, "norm")
    return porter.finish()

