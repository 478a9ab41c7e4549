"""DeepMind's BYOL ResNets (``pretrain_res50x1.pkl``, ``pretrain_res200x2.pkl``;
Grill et al., NeurIPS 2020), from the release's pickle.

The file is what the ``byol`` code's checkpointer writes with ``dill``:
``{"experiment_state": _ByolExperimentState(online_params, target_params,
online_state, target_state, opt_state), "step": int, "rng": key}``, the
parameters and BatchNorm averages as Haiku mappings of numpy arrays. Reading
it with ``pickle`` would import ``byol``, ``haiku``, ``optax`` and ``jax``
and run what the file names; ``read_pickle`` instead resolves only numpy's
array constructors and Python's containers, turns Haiku's mappings into
dicts and every other object the file names (the experiment-state tuple,
optimizer states, JAX keys) into an inert tuple of its arguments, so
nothing from the file runs. It is still only read with ``--allow_pickle``.

The network is Haiku's ResNet v1 (``hk.nets.ResNet50``, and the deeper and
wider ones): a 7x7/2 convolution, BatchNorm, ReLU and a 3x3/2 max-pool, then
bottleneck blocks with the stride on the 3x3 convolution and a projection
shortcut in each group's first block; every convolution and the pool pad
TensorFlow's way ("SAME": the extra row and column at the end), which
Keras's ``padding="same"`` is; no convolution bias; BatchNorm eps 1e-5 on
the ``average`` of each ``mean_ema`` / ``var_ema``. The embedding is the
global mean of the last map (2048 x the width). Parameter names are Haiku
module paths, ``res_net50/~/block_group_0/~/block_0/~/conv_0/w``; a layer
here is named by the path after the root, ``/~/`` written ``__``.
"""

from __future__ import annotations

import codecs
import collections
import copyreg
import pickle
import re

import keras
import numpy as np
from keras import layers

from ega_tf.core.errors import ConversionError, first_line
from ega_tf.nn.layers import BatchNorm
from ega_tf.teachers.porting import WeightPorter
from ega_tf.teachers.resnet import bottleneck_stages

_BLOCK = re.compile(r"/~/block_group_(\d)/~/block_(\d+)/~/conv_0/w$")
_SAFE = {("collections", "OrderedDict"): collections.OrderedDict,
         # protocol 2 writes bytes as _codecs.encode(text, "latin1")
         ("_codecs", "encode"): codecs.encode,
         ("copyreg", "_reconstructor"): copyreg._reconstructor,
         **{("builtins", t.__name__): t for t in (
             dict, list, tuple, set, frozenset, int, float, complex, bytes,
             bytearray, str, bool, object)}}
_NUMPY = ("_reconstruct", "scalar", "ndarray", "dtype")


class Opaque(tuple):
    """An object of a class the pickle names (not imported): its
    constructor arguments, and its state if it had one."""

    def __new__(cls, *args):
        return tuple.__new__(cls, args)

    def __init__(self, *args):
        del args

    def __setstate__(self, state):
        self.state = state


def _haiku_mapping(data=None, *rest):
    """Haiku's frozendict / FlatMapping reduce to their contents."""
    del rest
    return dict(data or {})


class _Unpickler(pickle.Unpickler):

    def find_class(self, module, name):
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if module in ("numpy", "numpy.core.multiarray",
                      "numpy._core.multiarray") and name in _NUMPY:
            return super().find_class(
                "numpy" if name in ("ndarray", "dtype")
                else "numpy._core.multiarray", name)
        if module == "haiku._src.data_structures":
            return _haiku_mapping
        return Opaque  # byol, optax, jax, dill helpers: never imported


def read_pickle(path):
    """The release's parameters and BatchNorm state as one flat dict:
    ``module/name`` (``res_net50/~/initial_conv/w``) and
    ``module/~/mean_ema/average`` for the state."""
    try:
        with open(path, "rb") as f:
            top = _Unpickler(f).load()
    except Exception as e:
        raise ConversionError(f"Could not read {path!r} as BYOL's pickle "
                              f"({first_line(e)}).") from None
    state = top.get("experiment_state") if isinstance(top, dict) else None
    if not isinstance(state, tuple) or len(state) < 3:
        raise ConversionError(
            f"{path!r} is a pickle but not DeepMind BYOL's checkpoint (a dict"
            " with 'experiment_state': online_params, target_params, "
            "online_state, ...).")
    flat = {}
    for tree in (state[0], state[2]):  # online parameters and state
        _flatten(tree, "", flat)
    return flat


def _flatten(tree, prefix, out):
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(tree, np.ndarray) or np.isscalar(tree):
        out[prefix] = np.asarray(tree)


def infer_arch(state):
    roots = {k.split("/~/")[0] for k in state if "/~/initial_conv/" in k}
    if len(roots) != 1:
        raise ConversionError("No Haiku ResNet in the file (expected "
                              "res_net*/~/initial_conv/w).")
    root = roots.pop()
    blocks = [0, 0, 0, 0]
    for k in state:
        m = _BLOCK.search(k)
        if m and k.startswith(root + "/"):
            s = int(m.group(1))
            blocks[s] = max(blocks[s], int(m.group(2)) + 1)
    stem = state[f"{root}/~/initial_conv/w"]
    return {"root": root, "blocks": blocks,
            "width": int(stem.shape[-1]) // 64}


def build(arch):
    """Haiku's ResNet v1 with "SAME" padding (float NHWC -> pooled
    feature), named 'backbone'."""

    def conv_bn(x, filters, kernel, stride, relu=True, where=None):
        s, b, part = where
        path = f"block_group_{s}__block_{b}__"
        conv, norm = ((path + "shortcut_conv", path + "shortcut_batchnorm")
                      if part == "downsample" else
                      (f"{path}conv_{part - 1}", f"{path}batchnorm_{part - 1}"))
        x = layers.Conv2D(filters, kernel, stride, padding="same",
                          use_bias=False, name=conv)(x)
        x = BatchNorm(epsilon=1e-5, name=norm)(x)
        return layers.ReLU()(x) if relu else x

    w = arch["width"]
    inputs = keras.Input((None, None, 3), name="pixels")
    x = layers.Conv2D(64 * w, 7, 2, padding="same", use_bias=False,
                      name="initial_conv")(inputs)
    x = layers.ReLU()(BatchNorm(epsilon=1e-5, name="initial_batchnorm")(x))
    x = layers.MaxPooling2D(3, 2, padding="same", name="initial_pool")(x)
    x = bottleneck_stages(x, arch["blocks"], [64 * w * 2**s
                                              for s in range(4)], conv_bn)
    out = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, out, name="backbone")


def port(model, state, ignore=()):
    porter = WeightPorter(state, ignore=(*ignore, "*/counter", "*/hidden"))
    root = infer_arch(state)["root"]
    flat = lambda v: v.reshape(-1)  # noqa: E731  (1, 1, 1, C) -> (C,)
    for layer in model.layers:
        key = f"{root}/~/" + layer.name.replace("__", "/~/")
        if isinstance(layer, layers.Conv2D):
            porter.port(layer.kernel, f"{key}/w")
        elif isinstance(layer, layers.BatchNormalization):
            porter.port(layer.gamma, f"{key}/scale", flat)
            porter.port(layer.beta, f"{key}/offset", flat)
            porter.port(layer.moving_mean, f"{key}/~/mean_ema/average", flat)
            porter.port(layer.moving_variance, f"{key}/~/var_ema/average",
                        flat)
    return porter.finish()
