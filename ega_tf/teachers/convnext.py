"""DINOv3's ConvNeXt models (T, S, B, L) in Keras's own ConvNeXt.

Liu et al., "A ConvNet for the 2020s", CVPR 2022, as the DINOv3 release
stores it: ``downsample_layers.0`` (4x4 stride-4 conv, LayerNorm over
channels), ``downsample_layers.1-3`` (LayerNorm, 2x2 stride-2 conv),
``stages.i.j`` blocks (``dwconv`` 7x7 depthwise, ``norm``, ``pwconv1``,
GELU, ``pwconv2``, ``gamma``), every LayerNorm eps 1e-6, and a final
``norm`` (stored twice: also as ``norms.3``, one module listed twice). The
publisher's ``model(x)`` returns that norm of the globally averaged last
map, which is what ``keras.applications``' ConvNeXt computes with
``include_top=False, pooling="avg"``; its layers are the same, so the port
is a copy. Depths and widths are read off the keys and shapes.
"""

from __future__ import annotations

import re

import keras

from ega_tf.core.errors import ConversionError
from ega_tf.teachers.porting import WeightPorter, torch_conv_kernel
from ega_tf.teachers.vit import port_dense, port_layer_norm

_BLOCK = re.compile(r"^stages\.(\d)\.(\d+)\.")
SIZES = {(3, 3, 9, 3, 96): "convnext_tiny", (3, 3, 27, 3, 96): "convnext_small",
         (3, 3, 27, 3, 128): "convnext_base",
         (3, 3, 27, 3, 192): "convnext_large"}


def infer_arch(state):
    if "downsample_layers.0.0.weight" not in state or "norm.weight" not in \
            state:
        raise ConversionError("Not a DINOv3 ConvNeXt: expected "
                              "downsample_layers.*, stages.*, norm.* keys.")
    depths = [0, 0, 0, 0]
    for key in state:
        m = _BLOCK.match(key)
        if m:
            s = int(m.group(1))
            depths[s] = max(depths[s], int(m.group(2)) + 1)
    dims = [int(state[f"stages.{s}.0.dwconv.weight"].shape[0])
            for s in range(4)]
    return {"network": SIZES.get((*depths, dims[0]), "convnext"),
            "depths": depths, "dims": dims}


def build(arch):
    from keras.src.applications.convnext import ConvNeXt
    body = ConvNeXt(depths=arch["depths"], projection_dims=arch["dims"],
                    include_top=False, include_preprocessing=False,
                    pooling="avg", weights=None, input_shape=(None, None, 3),
                    name="convnext")
    inputs = keras.Input((None, None, 3), name="pixels")
    return keras.Model(inputs, body(inputs), name="backbone")


def port(model, state, ignore=()):
    porter = WeightPorter(state, ignore=(*ignore, "norms.3.*"))
    body = model.get_layer("convnext")
    get = body.get_layer
    stem = get("convnext_stem")
    porter.port(stem.layers[0].kernel, "downsample_layers.0.0.weight",
                torch_conv_kernel)
    porter.port(stem.layers[0].bias, "downsample_layers.0.0.bias")
    port_layer_norm(porter, stem.layers[1], "downsample_layers.0.1")
    for s, depth in enumerate(body_depths(body)):
        if s:
            down = get(f"convnext_downsampling_block_{s - 1}")
            port_layer_norm(porter, down.layers[0],
                            f"downsample_layers.{s}.0")
            porter.port(down.layers[1].kernel,
                        f"downsample_layers.{s}.1.weight", torch_conv_kernel)
            porter.port(down.layers[1].bias, f"downsample_layers.{s}.1.bias")
        for b in range(depth):
            ours, theirs = f"convnext_stage_{s}_block_{b}", f"stages.{s}.{b}"
            dw = get(f"{ours}_depthwise_conv")
            porter.port(dw.kernel, f"{theirs}.dwconv.weight",
                        torch_conv_kernel)
            porter.port(dw.bias, f"{theirs}.dwconv.bias")
            port_layer_norm(porter, get(f"{ours}_layernorm"), f"{theirs}.norm")
            port_dense(porter, get(f"{ours}_pointwise_conv_1"),
                       f"{theirs}.pwconv1")
            port_dense(porter, get(f"{ours}_pointwise_conv_2"),
                       f"{theirs}.pwconv2")
            porter.port(get(f"{ours}_layer_scale").gamma, f"{theirs}.gamma")
    final = [layer for layer in body.layers
             if isinstance(layer, keras.layers.LayerNormalization)][-1]
    port_layer_norm(porter, final, "norm")
    return porter.finish()


def body_depths(body):
    names = [layer.name for layer in body.layers]
    return [sum(1 for n in names if n.startswith(f"convnext_stage_{s}_block_")
                and n.endswith("_depthwise_conv")) for s in range(4)]

