#!/usr/bin/env python
"""Does tests/test_trajectory.py notice a wrong step? Each case makes one
part of ega_tf's step wrong on purpose (patched in this process only) and
checks the lockstep trajectory against PyTorch's with the test's bounds.

    python tools/diagnostics/trajectory_mutations.py

Prints, for each case, CAUGHT and which bound failed, or "passes" with
the measurements. The first case changes nothing and must pass.
"""

from __future__ import annotations

import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def check(method, weights=None):
    """The test's bounds on ``method``'s lockstep run (with ``weights``
    overriding the method's published ones)."""
    import numpy as np

    from tests import test_trajectory as T
    create = T.methods.create
    if weights:
        T.methods.create = lambda name, **kw: create(name, weights, **kw)
    try:
        model, data, _, reference = T.reference_run(method)
        ours = T.lockstep_keras(model, data, reference)
    finally:
        T.methods.create = create
    errors = T.step_errors(ours, reference)
    terms = max(e[0] for e in errors)
    updates = np.array([e[2] for e in errors])
    share = np.mean(updates <= T.UPDATE_TOL)
    failed = []
    if terms > T.TERMS_TOL:
        failed.append(f"terms {terms:.1e}")
    if share < T.UPDATE_SHARE:
        failed.append(f"{share:.0%} of steps within {T.UPDATE_TOL:g}")
    if updates.max() > T.UPDATE_MAX:
        failed.append(f"largest {updates.max():.2f}")
    if failed:
        return "CAUGHT: " + ", ".join(failed)
    return (f"passes (terms {terms:.1e}, {share:.0%} of steps within "
            f"{T.UPDATE_TOL:g}, largest {updates.max():.1e})")


def cases():
    """[(label, method, [(object, attribute, replacement)], weights)]."""
    import keras
    import tensorflow as tf
    from keras import ops

    from ega_tf.methods import maths
    from ega_tf.nn import layers, optimizers, replicas
    from tests import test_trajectory as T

    def sgd(decay_vectors=True, dampen=False, damp_first=False):
        def update_step(self, gradient, variable, learning_rate):
            lr = ops.cast(learning_rate, variable.dtype)
            g = ops.cast(gradient, variable.dtype)
            if decay_vectors or len(variable.shape) > 1:
                g = g + self.l2 * variable
            m = self.momentum
            if dampen:
                g = (1 - m) * g
            if damp_first:
                g = g * (1 - m * ops.cast(self.iterations == 0,
                                          variable.dtype))
            buf = self.buffers[self._get_variable_index(variable)]
            self.assign(buf, m * buf + g)
            self.assign_sub(variable, lr * buf)
        return update_step

    schedule = optimizers.step_schedule

    def drops_late(*args, **kwargs):
        s = schedule(*args, **kwargs)
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [b + 1 for b in s.boundaries], s.values)

    build = T.sources.build

    def batchnorm(momentum, epsilon=1e-5):
        def patched(*args, **kwargs):
            backbone, normalisation = build(*args, **kwargs)
            for layer in layers.batchnorm_layers(backbone):
                layer.momentum, layer.epsilon = momentum, epsilon
            return backbone, normalisation
        return patched

    def keras_batchnorm(self, inputs, training=None, mask=None):
        return keras.layers.BatchNormalization.call(
            self, inputs, training=training, mask=mask)

    mean = replicas.mean

    def summed(values, weights):
        value, share = mean(values, weights)
        n = tf.reduce_sum(weights)
        return value * n, share * n

    kd = maths.kd_per_example

    def kd_without_t2(t, s, temperature=4.0):
        return kd(t, s, temperature) / temperature**2

    sgd_class = optimizers.TorchSGD
    return [
        ("nothing (control)", "ega", [], None),
        ("no weight decay on BatchNorm and biases", "ega",
         [(sgd_class, "update_step", sgd(decay_vectors=False))], None),
        ("dampening = momentum", "ega",
         [(sgd_class, "update_step", sgd(dampen=True))], None),
        ("momentum's first step damped", "ega",
         [(sgd_class, "update_step", sgd(damp_first=True))], None),
        ("the rate drops one step late", "ega",
         [(T, "step_schedule", drops_late)], None),
        ("BatchNorm momentum 0.99 (PyTorch's 0.01)", "ega",
         [(T.sources, "build", batchnorm(0.99))], None),
        ("BatchNorm epsilon 1e-3", "ega",
         [(T.sources, "build", batchnorm(0.9, 1e-3))], None),
        ("the biased moving variance (Keras's own layer)", "ega",
         [(layers.BatchNorm, "call", keras_batchnorm)], None),
        ("per-example terms summed, not averaged", "kd",
         [(replicas, "mean", summed)], None),
        ("KD without T^2", "kd",
         [(maths, "kd_per_example", kd_without_t2)], None),
        ("EGA's edge weight 0.3", "ega", [], {"edge_weight": 0.3}),
        ("CRD's Z estimated at every step", "crd", [],
         {"crd_z_per_step": 1}),
        ("CRD's bank momentum 0.9", "crd", [], {"crd_momentum": 0.9}),
    ]


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def main():
    from ega_tf.core import runtime
    runtime.import_tensorflow()
    for label, method, patches, weights in cases():
        with contextlib.ExitStack() as stack:
            for obj, name, value in patches:
                stack.enter_context(patched(obj, name, value))
            print(f"{label} ({method}): {check(method, weights)}",
                  flush=True)


if __name__ == "__main__":
    main()
