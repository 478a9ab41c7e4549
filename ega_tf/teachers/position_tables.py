"""A ViT's learned position table resized as its publisher's PyTorch code
resizes it, computed once at conversion.

A ViT stored at one resolution (DINOv2 at 518 px: 37 x 37 patches) and used
at another (224 px: 16 x 16) resizes its table of patch positions with
``torch.nn.functional.interpolate(mode="bicubic")``. Releases call it three
ways, and each gives other numbers:

``scale``
    a scale factor, ``(out + offset) / in``; the output has ``floor(in *
    scale)`` rows but source coordinates are mapped by ``1 / scale``, not by
    ``in / out`` (DINOv2's files without registers, offset 0.1).
``size``
    the output size; coordinates mapped by ``in / out`` (Hugging Face's
    ``Dinov2Model``).
``antialias``
    the output size with antialiasing: Pillow's bicubic kernel (a = -0.5),
    widened by the scale when shrinking, normalised over the taps inside
    the grid (DINOv2's ``_reg`` files; ``Dinov2WithRegistersModel``).

The plain bicubic uses a = -0.75 and clamps taps that fall outside the
grid to its border. ``tf.image.resize`` (a = -0.5, other borders), which
keras-hub's backbones use, differs from all three by about 1e-3 of the
table's scale, so the table is resized here, in numpy, as a pair of
(out x in) matrices, and keras-hub is given the result at the input size
itself (where it resizes nothing). ``tests/test_position_tables.py``
compares these matrices with PyTorch's ``interpolate``.
"""

from __future__ import annotations

import math

import numpy as np

RULES = ("scale", "size", "antialias")
_A_PLAIN, _A_ANTIALIAS = -0.75, -0.5


def _cubic(x, a):
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


def _plain(in_size, out_size, inv_scale):
    """PyTorch's ``upsample_bicubic2d`` (align_corners False) as a matrix,
    in float64 (PyTorch's float32 coordinates move its weights by ~2e-6)."""
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        real = inv_scale * (i + 0.5) - 0.5
        base = math.floor(real)
        t = real - base
        for k, w in zip(range(base - 1, base + 3),
                        _cubic(np.array([t + 1, t, 1 - t, 2 - t]), _A_PLAIN)):
            m[i, min(max(k, 0), in_size - 1)] += w
    return m


def _antialiased(in_size, out_size, inv_scale):
    """PyTorch's ``_upsample_bicubic2d_aa`` (Pillow's taps) as a matrix."""
    support = 2.0 * max(inv_scale, 1.0)
    stretch = 1.0 / max(inv_scale, 1.0)
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = inv_scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = _cubic((taps - center + 0.5) * stretch, _A_ANTIALIAS)
        m[i, lo:hi] = w / w.sum() if w.sum() else w
    return m


def matrix(in_size, out_size, rule, offset=0.0):
    """The (out_size x in_size) float64 matrix of one axis under ``rule``."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    if rule == "scale":
        scale = (out_size + offset) / in_size
        if math.floor(in_size * scale) != out_size:
            raise ValueError(f"offset {offset} gives {in_size} -> "
                             f"{math.floor(in_size * scale)}, not {out_size}")
        return _plain(in_size, out_size, 1.0 / scale)
    inv_scale = in_size / out_size
    if rule == "size":
        return _plain(in_size, out_size, inv_scale)
    return _antialiased(in_size, out_size, inv_scale)


def resize(table, out_side, rule, offset=0.0, prefix=1):
    """``table`` [1, prefix + n*n, D] (class token first, then the n x n
    patch grid row by row) resized to ``out_side`` x ``out_side`` patches;
    float32, as the network stores it."""
    table = np.asarray(table, np.float64)
    n = math.isqrt(table.shape[1] - prefix)
    if n * n != table.shape[1] - prefix:
        raise ValueError(f"{table.shape[1] - prefix} patch positions are not "
                         "a square grid")
    if n == out_side:
        return table.astype(np.float32)
    grid = table[0, prefix:].reshape(n, n, -1)
    m = matrix(n, out_side, rule, offset)
    out = np.einsum("yi,ijd,xj->yxd", m, grid, m)
    return np.concatenate([table[:, :prefix], out.reshape(1, -1, grid.shape[-1])],
                          axis=1).astype(np.float32)
