"""Process-wide settings a run fixes before building anything: the seed and
the Keras dtype policy."""

from __future__ import annotations

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
