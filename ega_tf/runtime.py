"""Process-wide settings a run fixes before building anything: the seed,
the Keras dtype policy, TensorFlow's op determinism."""

from __future__ import annotations

import contextlib

from ega_tf.registry import check_choice

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check_precision(policy):
    check_choice("precision", policy, PRECISIONS)


def set_precision(policy):
    """Sets the global Keras dtype policy."""
    import keras
    check_precision(policy)
    keras.mixed_precision.set_global_policy(policy)


def set_seed(seed):
    """Seeds Python, NumPy and TensorFlow (initializers draw from these)."""
    import keras
    keras.utils.set_random_seed(int(seed))


@contextlib.contextmanager
def op_determinism(on=True):
    """TensorFlow's op determinism inside the block, the process's previous
    setting restored after it: a run must not leave it on for what the
    process does next (Keras, for one, then refuses to compile with XLA).

    TensorFlow's public API can only turn it on; reading and restoring the
    setting use its ``tensorflow.python.framework.config`` functions (as
    Keras does). Where those are missing, it stays on after the block."""
    import tensorflow as tf
    try:
        from tensorflow.python.framework import config as tf_config
        was = tf_config.is_op_determinism_enabled()
        restore = tf_config.disable_op_determinism
    except (ImportError, AttributeError):
        was, restore = False, None
    if on and not was:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if on and not was and restore is not None:
            restore()
