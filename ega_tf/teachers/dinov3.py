"""DINOv3 Vision Transformers (ViT-S/16 to ViT-7B/16) in keras-hub's
``DINOV3Backbone``.

Siméoni et al., "DINOv3", 2025. The publisher's hub files are plain state
dicts: ``cls_token``, ``storage_tokens`` (4), ``mask_token``,
``patch_embed.proj``, ``rope_embed.periods``, ``blocks.N.{norm1, attn.qkv
(+ bias and bias_mask), attn.proj, ls1.gamma, norm2, mlp.fc1/fc2 or
mlp.w1/w2/w3 (SwiGLU), ls2.gamma}``, ``norm`` and, for ViT-7B and the
satellite ViT-L, ``local_cls_norm`` (used only in training). There is no
position table: positions enter as rotary embeddings of each patch's
coordinates, normalised to [-1, 1] per axis, so any input size multiple of
16 works without resizing anything.

Read off the file: width, depth, MLP kind and width, storage tokens, which
biases exist; the query/key/value bias is the stored bias times
``bias_mask`` (the publisher's key bias is masked to zero, so keras-hub's
key projection has none). The RoPE periods are checked against keras-hub's
rule (base 100). Stated by the family: heads = width / 64, LayerNorm eps
1e-5, SwiGLU gate ``w1``, up ``w2``, down ``w3``. The embedding is the class
token after the final norm, as the publisher's ``model(x)`` returns;
``feature=cls_patchmean`` adds the mean patch token.
"""

from __future__ import annotations

import numpy as np

from ega_tf.core.errors import ConversionError
from ega_tf.teachers.dinov2 import check_input_size, vit_shape
from ega_tf.teachers.porting import (WeightPorter, torch_conv_kernel,
                                     torch_dense_kernel)
from ega_tf.teachers.vit import (check_feature, network_name,
                                 port_layer_norm, wrap_tokens)

ROPE_BASE = 100.0
DEFAULT_INPUT_SIZE = 224


def _effective_qkv_bias(state, key):
    bias = state.get(f"{key}.attn.qkv.bias")
    if bias is None:
        return None
    mask = state.get(f"{key}.attn.qkv.bias_mask")
    return bias if mask is None else bias * mask


def rope_periods(head_dim, base=ROPE_BASE):
    """The publisher's RoPE periods: base ** (2 j / (head_dim / 2))."""
    return base ** (2 * np.arange(head_dim // 4) / (head_dim // 2))


def infer_arch(state, head_dim=64, input_size=None, feature="cls"):
    width, patch, depth = vit_shape(state, "DINOv3 ViT", ("storage_tokens",))
    gated = "blocks.0.mlp.w1.weight" in state
    mlp_dim = int(state["blocks.0.mlp." + ("w1" if gated else "fc1")
                        + ".weight"].shape[0])
    bias = _effective_qkv_bias(state, "blocks.0")
    if "rope_embed.periods" in state:
        periods = np.asarray(state["rope_embed.periods"], np.float64)
        want = rope_periods(width // (width // head_dim))
        if periods.shape != want.shape or not np.allclose(periods, want,
                                                          rtol=1e-5):
            raise ConversionError(
                "The file's RoPE periods are not DINOv3's base-100 periods "
                f"for {width // head_dim} heads of {head_dim}; keras-hub's "
                "backbone computes only those.")
    size = int(input_size or DEFAULT_INPUT_SIZE)
    check_input_size(size, patch)
    return {"network": network_name(width, patch, plus=gated and width < 4096),
            "width": width, "depth": depth, "heads": width // head_dim,
            "mlp_dim": mlp_dim, "gated": gated,
            "registers": int(state["storage_tokens"].shape[1]),
            "patch": patch, "resolution": size,
            "qkv_bias": bias is not None,
            "key_bias": bool(bias is not None and np.any(
                bias[width:2 * width] != 0)),
            "feature": check_feature(feature)}


def build(arch):
    import keras_hub
    size = arch["resolution"]
    qkv = arch["qkv_bias"]
    net = keras_hub.models.DINOV3Backbone(
        patch_size=arch["patch"], num_layers=arch["depth"],
        hidden_dim=arch["width"], num_heads=arch["heads"],
        intermediate_dim=arch["mlp_dim"],
        num_register_tokens=arch["registers"],
        hidden_activation="silu" if arch["gated"] else "gelu",
        use_gated_mlp=arch["gated"], use_query_bias=qkv,
        use_key_bias=arch["key_bias"], use_value_bias=qkv,
        layer_norm_eps=1e-5, image_shape=(size, size, 3),
        rope_theta=ROPE_BASE, name="dinov3")
    return wrap_tokens(net, size, arch["feature"], 1 + arch["registers"])


def port(model, state, ignore=()):
    porter = WeightPorter(state, ignore=(*ignore, "local_cls_norm.*",
                                         "rope_embed.periods",
                                         "blocks.*.attn.qkv.bias_mask"))
    net = model.get_layer("dinov3")
    emb = net.embeddings
    porter.port(emb.cls_token, "cls_token")
    porter.port(emb.mask_token, "mask_token", lambda t: t.reshape(1, 1, -1))
    porter.port(emb.register_tokens, "storage_tokens")
    porter.port(emb.patch_embeddings.projection.kernel,
                "patch_embed.proj.weight", torch_conv_kernel)
    porter.port(emb.patch_embeddings.projection.bias, "patch_embed.proj.bias")
    d = net.hidden_dim
    for i, layer in enumerate(net.encoder.layers):
        key = f"blocks.{i}"
        port_layer_norm(porter, layer.norm1, f"{key}.norm1")
        att = layer.attention
        bias = _effective_qkv_bias(state, key)
        for j, dense in enumerate((att.query_dense, att.key_dense,
                                   att.value_dense)):
            porter.port(dense.kernel, f"{key}.attn.qkv.weight",
                        lambda w, j=j: torch_dense_kernel(
                            w[j * d:(j + 1) * d]))
            if dense.bias is not None:
                dense.bias.assign(bias[j * d:(j + 1) * d])
        if bias is not None:
            porter.used.add(f"{key}.attn.qkv.bias")
        porter.port(att.output_dense.kernel, f"{key}.attn.proj.weight",
                    torch_dense_kernel)
        porter.port(att.output_dense.bias, f"{key}.attn.proj.bias")
        porter.port(layer.layer_scale1.lambda1, f"{key}.ls1.gamma")
        port_layer_norm(porter, layer.norm2, f"{key}.norm2")
        mlp = layer.mlp
        pairs = ((mlp.gate_proj, "w1"), (mlp.up_proj, "w2"),
                 (mlp.down_proj, "w3")) if net.use_gated_mlp else (
            (mlp.up_proj, "fc1"), (mlp.down_proj, "fc2"))
        for dense, name in pairs:
            porter.port(dense.kernel, f"{key}.mlp.{name}.weight",
                        torch_dense_kernel)
            if dense.bias is not None:
                porter.port(dense.bias, f"{key}.mlp.{name}.bias")
        porter.port(layer.layer_scale2.lambda1, f"{key}.ls2.gamma")
    port_layer_norm(porter, net.layernorm, "norm")
    return porter.finish()
