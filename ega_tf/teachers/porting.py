"""Strict weight porting: every source tensor is used or explicitly ignored.

A converter calls ``porter.port(variable, key, transform)`` for each target
variable; ``porter.finish()`` then fails, listing every problem at once, if
any source tensor was neither used nor matched by an ignore pattern, if a key
was missing, or if a shape disagreed.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from ega_tf.core.errors import ConversionError

__all__ = ["ConversionError", "WeightPorter", "port_batchnorm",
           "torch_conv_kernel", "torch_dense_kernel"]


def torch_conv_kernel(w):
    """PyTorch (out, in, h, w) -> Keras (h, w, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def torch_dense_kernel(w):
    """PyTorch Linear (out, in) -> Keras Dense (in, out)."""
    return np.transpose(w)


def port_batchnorm(porter, layer, key):
    """A PyTorch ``BatchNorm2d`` at ``key`` into a Keras BatchNormalization."""
    for var, name in zip((layer.gamma, layer.beta, layer.moving_mean,
                          layer.moving_variance),
                         ("weight", "bias", "running_mean", "running_var")):
        porter.port(var, f"{key}.{name}")


class WeightPorter:
    """Copies tensors from ``source`` (name -> array) into Keras variables."""

    def __init__(self, source, ignore=()):
        self.source = dict(source)
        self.ignore = tuple(ignore)
        self.used = set()
        self.problems = []

    def port(self, variable, key, transform=None):
        if key not in self.source:
            self.problems.append(f"missing key {key!r} (for {variable.path})")
            return
        value = np.asarray(self.source[key])
        if transform is not None:
            value = transform(value)
        if tuple(value.shape) != tuple(variable.shape):
            self.problems.append(
                f"{key!r}: shape {tuple(value.shape)} after conversion, but "
                f"{variable.path} is {tuple(variable.shape)}")
            return
        variable.assign(value.astype(variable.dtype))
        self.used.add(key)

    def unused(self):
        return sorted(k for k in self.source if k not in self.used and not any(
            fnmatch.fnmatchcase(k, p) for p in self.ignore))

    def finish(self):
        """Raises ``ConversionError`` listing every problem, if any."""
        problems = list(self.problems)
        left = self.unused()
        if left:
            problems.append(f"{len(left)} source tensor(s) used by nothing: "
                            + ", ".join(left[:20])
                            + (" ..." if len(left) > 20 else ""))
        if problems:
            raise ConversionError(
                "The checkpoint does not match the architecture:\n  - "
                + "\n  - ".join(problems))
        return sorted(self.used)
